"""NNI's ``PBT`` tuner: population based training, checkpoints handed from trial to trial.

Details: :class:`PbtTuner`.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.checkpoints import LOAD_KEY, SAVE_KEY, checkpoint_ref
from shared.metric_rule import loss_of
from shared.search_space import ParamSpec, flatten_search_space, from_value, sample_internal, to_value

from .errors import WaitForResults, refuse_unsupported_space, suggest_each

__all__ = ["PbtSettings", "PbtTuner"]

_DEDUP_ATTEMPTS = 32
_QLOGNORMAL_FLOOR = 1e-10  # NNI's lower bound for a perturbed qlognormal value


@dataclass(frozen=True)
class PbtSettings:
    """NNI's PBT classArgs (its defaults)."""

    all_checkpoint_dir: str | None = None  # None: the experiment's storage keeps them
    population_size: int = 10
    factor: float = 0.2
    resample_probability: float = 0.25
    fraction: float = 0.2


@dataclass
class _Run:
    """One member for one step: a trial once handed out."""

    member: int
    step: int
    hyperparameters: dict[str, Any]
    load: str
    save: str
    handed: bool = False
    ended: bool = False
    loss: float | None = None  # lower is better; None: no result

    @property
    def parameters(self) -> dict[str, Any]:
        return {**self.hyperparameters, LOAD_KEY: self.load, SAVE_KEY: self.save}


class PbtTuner:
    """NNI's ``PBT`` tuner: population based training, checkpoints handed from trial to trial.

    A population of ``population_size`` members trains in steps; each trial runs one member for one
    step (what a step is, e.g. an epoch, the trial decides). A trial's parameters are the member's
    hyperparameters plus two folders (NNI's keys): ``load_checkpoint_dir``, the checkpoint to start
    from, and ``save_checkpoint_dir`` (``<root>/<member>/<step>``), where it saves its own. Step
    ``s + 1`` starts once every trial of step ``s`` has ended (NNI runs steps in lockstep too; until
    then :class:`WaitForResults`). Between steps, exploit and explore as NNI does: members are ranked
    by their step's result (one that ended without a result ranks last); each of the bottom
    ``ceil(fraction * population_size)`` takes a random top member's checkpoint and hyperparameters,
    each perturbed: resampled from the prior with ``resample_probability``, else moved one step up or
    down (choice and randint: the next option; uniform and loguniform: ``factor`` of the range;
    quniform, qloguniform, qnormal, qlognormal: ``q``; normal and lognormal: ``factor * sigma``),
    clipped to the range. The others go on from their own checkpoint with the same hyperparameters.

    ``<root>`` is ``classArgs.all_checkpoint_dir`` (a folder every trial reaches, as in NNI), or, when
    it is not given, the experiment's storage (:mod:`shared.checkpoints`). PBT never runs out by
    itself: the experiment's ``maxTrialNumber`` (``population_size`` times the steps) ends it.

    Restart-safe without state of its own: the first population comes from a generator seeded by
    (seed, 0), step ``s``'s exploit and explore from (seed, s), and the results from the records, so
    :meth:`import_data` replays the steps; ``save_checkpoint_dir`` names a trial's member and step.
    """

    name = "PBT"
    #: The service passes ``ended`` records and ``parameters`` to trial_end (as for the advisors).
    learns_from_intermediate = True

    def __init__(self, *, seed: int, minimize: bool, settings: PbtSettings | None = None) -> None:
        self.seed = seed
        self.minimize = minimize
        self.settings = settings or PbtSettings()
        self.specs: list[ParamSpec] = []
        self.runs: list[_Run] = []  # the current step's, by member
        self.step = 0
        self._by_id: dict[Any, _Run] = {}

    # ------------------------------------------------------------ NNI's methods

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        refuse_unsupported_space(self.name, search_space)
        specs = flatten_search_space(search_space)
        self.specs = specs
        self.step = 0
        self._by_id = {}
        rng = np.random.default_rng([self.seed, 0])
        self.runs = []
        seen: set[str] = set()
        for member in range(self.settings.population_size):
            hyperparameters = self._draw(rng)
            for _ in range(_DEDUP_ATTEMPTS):  # distinct members where the space allows it
                if _key(hyperparameters) not in seen:
                    break
                hyperparameters = self._draw(rng)
            seen.add(_key(hyperparameters))
            folder = self._folder(member, 0)  # as NNI: step 0 loads from where it saves (nothing yet)
            self.runs.append(_Run(member, 0, hyperparameters, load=folder, save=folder))

    def generate_parameters(self, parameter_id: Any, **kwargs: Any) -> dict[str, Any]:
        """The next member of the current step; :class:`WaitForResults` once all are out."""
        if not self.specs:
            raise RuntimeError(f"tuner '{self.name}': update_search_space must be called first")
        if parameter_id in self._by_id:
            return self._by_id[parameter_id].parameters
        for run in self.runs:
            if not run.handed:
                run.handed = True
                self._by_id[parameter_id] = run
                return run.parameters
        raise WaitForResults(f"tuner '{self.name}': step {self.step} waits for its running trials")

    def generate_multiple_parameters(self, parameter_id_list: Sequence[Any], **kwargs: Any) -> list[Any]:
        return suggest_each(self.generate_parameters, parameter_id_list)

    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None:
        run = self._run(parameter_id, parameters)
        if run is not None and not run.ended:
            self._end(run, self._loss(value))

    def trial_end(self, parameter_id: Any, success: bool, parameters: Any = None, **kwargs: Any) -> None:
        """A trial ended; without a result it ranks last in its step (NNI: a failed trial's -inf)."""
        run = self._run(parameter_id, parameters)
        if run is not None and not run.ended:
            self._end(run, None)

    def import_data(self, data: Iterable[Mapping[str, Any]]) -> int:
        """Replay the steps from recorded trials (``{"parameter", "value", "ended"}``).

        A record marks its member's run as handed out and, with ``ended``, as over with its value,
        which moves on to the next step when the step completes. Returns how many records matched.
        """
        records: dict[str, tuple[Any, bool]] = {}
        for record in data:
            parameters = record.get("parameter")
            if isinstance(parameters, Mapping) and isinstance(parameters.get(SAVE_KEY), str):
                ended = bool(record.get("ended", record.get("value") is not None))
                records[parameters[SAVE_KEY]] = (record.get("value"), ended)
        matched = 0
        while True:
            step = self.step
            for run in list(self.runs):
                found = records.pop(run.save, None)
                if found is None or run.handed:
                    continue
                run.handed = True
                matched += 1
                if found[1]:
                    self._end(run, self._loss(found[0]))
            if self.step == step:
                return matched

    # ------------------------------------------------------------ steps

    def _end(self, run: _Run, loss: float | None) -> None:
        run.ended = True
        run.loss = loss
        if run.step == self.step and all(r.ended for r in self.runs):
            self._next_step()

    def _next_step(self) -> None:
        """Exploit and explore (NNI's ``_proceed_next_epoch``), with step ``s + 1``'s generator."""
        self.step += 1
        rng = np.random.default_rng([self.seed, self.step])
        # Stable sort: ties keep member order; a run without a result ranks last.
        ranked = sorted(self.runs, key=lambda r: math.inf if r.loss is None else r.loss)
        cutoff = math.ceil(self.settings.fraction * len(ranked))
        tops, bottoms = ranked[:cutoff], ranked[len(ranked) - cutoff:] if cutoff else []
        bottom_members = {r.member for r in bottoms}
        runs: list[_Run] = []
        for previous in self.runs:  # member order
            save = self._folder(previous.member, self.step)
            if previous.member in bottom_members:
                top = tops[int(rng.integers(len(tops)))]
                runs.append(_Run(previous.member, self.step, self._perturb(top.hyperparameters, rng),
                                 load=top.save, save=save))
            else:
                runs.append(_Run(previous.member, self.step, dict(previous.hyperparameters),
                                 load=previous.save, save=save))
        self.runs = runs

    def _perturb(self, hyperparameters: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = dict(hyperparameters)
        for spec in self.specs:
            if rng.random() < self.settings.resample_probability:
                out[spec.name] = to_value(spec, sample_internal(spec, rng))
            else:
                out[spec.name] = self._neighbour(spec, out[spec.name], up=bool(rng.random() > 0.5))
        return out

    def _neighbour(self, spec: ParamSpec, value: Any, up: bool) -> Any:
        """The value one perturbation step up or down, clipped to the range (NNI's uv/lv, ub/lb)."""
        sign = 1.0 if up else -1.0
        if spec.categorical:
            index = from_value(spec, value) + sign
            return to_value(spec, min(max(index, 0.0), spec.size - 1.0))
        if spec.q is not None:
            moved = float(value) + sign * spec.q
            if spec.clip is not None:
                moved = min(max(moved, spec.clip[0]), spec.clip[1])
            elif spec.type == "qlognormal":
                moved = max(moved, _QLOGNORMAL_FLOOR)
            return to_value(spec, from_value(spec, moved))
        internal = from_value(spec, value)
        if spec.normal:
            return to_value(spec, internal + sign * self.settings.factor * spec.sigma)
        moved = internal + sign * self.settings.factor * (spec.high - spec.low)
        return to_value(spec, min(max(moved, spec.low), spec.high))

    # ------------------------------------------------------------ helpers

    def _folder(self, member: int, step: int) -> str:
        root = self.settings.all_checkpoint_dir
        if root is None:
            return checkpoint_ref(member, step)
        return posixpath.join(root, str(member), str(step))

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return {spec.name: to_value(spec, sample_internal(spec, rng)) for spec in self.specs}

    def _run(self, parameter_id: Any, parameters: Any) -> _Run | None:
        run = self._by_id.get(parameter_id)
        if run is not None or not isinstance(parameters, Mapping):
            return run
        # A trial handed out before a restart: found by its save folder (one per member and step).
        for candidate in self.runs:
            if candidate.save == parameters.get(SAVE_KEY) and candidate.handed:
                self._by_id[parameter_id] = candidate
                return candidate
        return None

    def _loss(self, value: Any) -> float | None:
        return loss_of(value, minimize=self.minimize)


def _key(parameters: Mapping[str, Any]) -> str:
    return json.dumps(parameters, sort_keys=True, default=str)
