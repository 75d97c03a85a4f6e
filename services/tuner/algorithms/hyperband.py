"""NNI's ``Hyperband`` advisor: successive halving in brackets, budgets handed to trials.

Details: :class:`HyperbandAdvisor`.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.algorithms import BUDGET_KEY
from shared.metric_rule import loss_of
from shared.search_space import ParamSpec, build_parameters, flatten_search_space, is_active, sample_internal

from .errors import WaitForResults, refuse_unsupported_space, suggest_each

__all__ = ["HyperbandAdvisor"]

_EPSILON = 1e-6  # as NNI: keeps floor(log(81, 3)) at 4 despite rounding
_DEDUP_ATTEMPTS = 32


@dataclass
class _Job:
    """One configuration at one budget: a trial once handed out."""

    bracket: int
    rung: int
    parameters: dict[str, Any]
    key: str
    handed: bool = False
    ended: bool = False
    loss: float | None = None  # lower is better; None: no result


@dataclass
class _Bracket:
    index: int  # k: brackets are numbered from 0 over the whole experiment
    s: int
    n: int
    r: float
    rungs: list[list[_Job]] = field(default_factory=list)
    stalled: bool = False  # a round ended without any result: nothing to promote

    def size(self, rung: int, eta: int) -> tuple[int, int]:
        """(configurations, budget) of round ``rung``, rounded as NNI rounds them."""
        return (math.floor(self.n / eta**rung + _EPSILON), math.floor(self.r * eta**rung + _EPSILON))

    @property
    def all_generated(self) -> bool:
        return self.stalled or len(self.rungs) > self.s


class HyperbandAdvisor:
    """NNI's ``Hyperband`` advisor: successive halving in brackets, budgets handed to trials.

    With ``s_max = floor(log_eta(R))``, bracket ``s`` (from ``s_max`` down to 0, then again) starts
    ``n = ceil((s_max + 1) * eta**s / (s + 1))`` random configurations at budget ``r = R / eta**s``;
    round ``i`` of it runs ``floor(n / eta**i)`` configurations at budget ``floor(r * eta**i)``, the
    best of round ``i - 1``. Each configuration-and-budget run is one trial; its parameters carry the
    budget under NNI's key ``TRIAL_BUDGET`` (epochs, batches: the trial decides what it means).

    As in NNI, a trial's score is its final result, or its latest intermediate result when it ended
    without one; a round is promoted once every trial of it has ended. Runs ready to go are handed
    out oldest bracket first, lowest round first (NNI: in the order they were made). ``exec_mode``
    ``parallelism`` starts the next bracket whenever nothing else is ready to run; ``serial`` starts
    it only after the current bracket has handed out its last round, and otherwise asks the service to wait
    (:class:`WaitForResults`) until running trials report. Hyperband never runs out by itself: the
    experiment's ``maxTrialNumber`` or ``maxExperimentDuration`` ends it.

    Restart-safe without state of its own: bracket ``k``'s first-round configurations are drawn from a
    generator seeded by (seed, k), and promotions follow from results, so :meth:`import_data` rebuilds
    every bracket from the recorded trials (matched by their parameters, budget included).
    """

    name = "Hyperband"
    #: The service gives this algorithm a trial's last intermediate result when it has no final one.
    learns_from_intermediate = True

    def __init__(self, *, seed: int, minimize: bool, R: int = 60, eta: int = 3,
                 exec_mode: str = "parallelism") -> None:
        self.seed = seed
        self.minimize = minimize
        self.R = R
        self.eta = eta
        self.exec_mode = exec_mode
        self.s_max = math.floor(math.log(R, eta) + _EPSILON)
        self.specs: list[ParamSpec] = []
        self._reset()

    def _reset(self) -> None:
        self.brackets: list[_Bracket] = []
        # Generated, not handed out: the oldest bracket's lowest round first. A fixed order (not the
        # order results happened to arrive in) is what lets import_data rebuild the same queue.
        self._queue: list[_Job] = []
        self._by_id: dict[Any, _Job] = {}
        self._replaying: dict[str, deque[tuple[Any, bool]]] | None = None  # during import_data
        self._recorded: dict[str, Mapping[str, Any]] = {}  # recorded parameters by key (import_data)

    # ------------------------------------------------------------ NNI's methods

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        refuse_unsupported_space(self.name, search_space)
        self.specs = flatten_search_space(search_space)
        self._reset()

    def generate_parameters(self, parameter_id: Any, **kwargs: Any) -> dict[str, Any]:
        """The next run in line; a new bracket when none is (``serial``: only after the last one's
        final round); :class:`WaitForResults` while a ``serial`` bracket waits for results."""
        if not self.specs:
            raise RuntimeError(f"tuner '{self.name}': update_search_space must be called first")
        if parameter_id in self._by_id:
            return dict(self._by_id[parameter_id].parameters)
        if not self._queue:
            if self.exec_mode == "serial" and self.brackets and not self.brackets[-1].all_generated:
                raise WaitForResults(f"tuner '{self.name}': bracket {self.brackets[-1].index} waits for "
                                     f"its running trials before its next round")
            self._new_bracket()
        job = self._queue.pop(0)
        job.handed = True
        self._by_id[parameter_id] = job
        return dict(job.parameters)

    def generate_multiple_parameters(self, parameter_id_list: Sequence[Any], **kwargs: Any) -> list[Any]:
        return suggest_each(self.generate_parameters, parameter_id_list)

    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None:
        """A trial's final (or, ended without one, last intermediate) result; it counts as ended."""
        job = self._job(parameter_id, parameters)
        if job is None or job.ended:
            return  # unknown, or a repeated delivery
        self._end(job, self._loss(value))

    def trial_end(self, parameter_id: Any, success: bool, parameters: Any = None, **kwargs: Any) -> None:
        """A trial ended; without a result it still counts as done for its round (it is not promoted).

        ``parameters`` finds a trial handed out before a restart (the service passes them)."""
        job = self._job(parameter_id, parameters)
        if job is not None and not job.ended:
            self._end(job, None)

    def import_data(self, data: Iterable[Mapping[str, Any]]) -> int:
        """Rebuild the brackets from recorded trials (``{"parameter", "value", "ended"}``, in order).

        Each bracket is generated again as it was; a recorded trial marks its run as handed out,
        and, with ``ended``, as over with its value, which promotes rounds as they complete.
        Returns how many recorded trials matched a run.
        """
        records: dict[str, deque[tuple[Any, bool]]] = defaultdict(deque)
        self._recorded = {}
        for record in data:
            parameters = record.get("parameter")
            if isinstance(parameters, Mapping):
                ended = bool(record.get("ended", record.get("value") is not None))
                records[_key(parameters)].append((record.get("value"), ended))
                self._recorded.setdefault(_key(parameters), parameters)
        self._replaying = records
        try:
            return self._rebuild(records)
        finally:
            self._replaying = None

    def _rebuild(self, records: dict[str, deque[tuple[Any, bool]]]) -> int:
        matched = 0
        while True:
            found = self._match_queued(records)
            matched += found
            if found:
                continue
            if not any(records.values()):
                return matched
            self._new_bracket()  # the records may belong to the next bracket: try it
            if not self._match_queued(records, probe=True):
                self._drop_last_bracket()  # they do not: leave them (another search space's trials)
                return matched

    # ------------------------------------------------------------ brackets

    def _new_bracket(self) -> _Bracket:
        k = len(self.brackets)
        s = self.s_max - k % (self.s_max + 1)
        n = math.ceil((self.s_max + 1) * self.eta**s / (s + 1) - _EPSILON)
        bracket = _Bracket(index=k, s=s, n=n, r=self.R / self.eta**s)
        self.brackets.append(bracket)
        count, budget = bracket.size(0, self.eta)
        configs = self._first_round(np.random.default_rng([self.seed, k]), count, budget)
        self._add_rung(bracket, configs, budget)
        return bracket

    def _first_round(self, rng: np.random.Generator, count: int, budget: int) -> list[dict[str, Any]]:
        """A new bracket's configurations: random, distinct within the bracket where possible."""
        configs: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(count):
            config = self._draw(rng)
            for _ in range(_DEDUP_ATTEMPTS):
                if _key(config) not in seen:
                    break
                config = self._draw(rng)
            seen.add(_key(config))
            configs.append(config)
        return configs

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        internal: dict[Any, float] = {}
        for spec in self.specs:
            if is_active(spec, internal):
                internal[spec.path] = sample_internal(spec, rng)
        return build_parameters(self.specs, internal)

    def _add_rung(self, bracket: _Bracket, configs: list[dict[str, Any]], budget: int) -> None:
        rung = len(bracket.rungs)
        jobs = []
        for config in configs:
            parameters = {**config, BUDGET_KEY: budget}
            jobs.append(_Job(bracket.index, rung, parameters, _key(parameters)))
        bracket.rungs.append(jobs)
        self._queue.extend(jobs)
        self._queue.sort(key=lambda job: (job.bracket, job.rung))  # stable: ranks stay in order

    def _end(self, job: _Job, loss: float | None) -> None:
        job.ended = True
        job.loss = loss
        bracket = self.brackets[job.bracket]
        rung = bracket.rungs[job.rung]
        if job.rung != len(bracket.rungs) - 1 or bracket.all_generated or not all(j.ended for j in rung):
            return
        scored = sorted((j for j in rung if j.loss is not None), key=lambda j: j.loss or 0.0)
        count, budget = bracket.size(job.rung + 1, self.eta)
        if not scored or count < 1:
            bracket.stalled = True
            return
        configs = [{k: v for k, v in j.parameters.items() if k != BUDGET_KEY} for j in scored[:count]]
        self._add_rung(bracket, configs, budget)

    # ------------------------------------------------------------ rebuilding

    def _match_queued(self, records: dict[str, deque[tuple[Any, bool]]], probe: bool = False) -> int:
        """Hand out queued runs that were recorded; apply the results of those that ended."""
        if probe:
            return sum(1 for job in self._queue if records.get(job.key))
        matched = 0
        for job in list(self._queue):
            waiting = records.get(job.key)
            if not waiting:
                continue
            value, ended = waiting.popleft()
            self._queue.remove(job)
            job.handed = True
            matched += 1
            if ended:
                self._end(job, self._loss(value))
        return matched

    def _drop_last_bracket(self) -> None:
        bracket = self.brackets.pop()
        self._queue = [job for job in self._queue if job.bracket != bracket.index]

    # ------------------------------------------------------------ helpers

    def _job(self, parameter_id: Any, parameters: Any) -> _Job | None:
        job = self._by_id.get(parameter_id)
        if job is not None or not isinstance(parameters, Mapping):
            return job
        key = _key(parameters)  # a trial handed out before a restart: found by its parameters
        for bracket in self.brackets:
            for rung in bracket.rungs:
                for candidate in rung:
                    if candidate.key == key and candidate.handed and not candidate.ended:
                        self._by_id[parameter_id] = candidate
                        return candidate
        return None

    def _loss(self, value: Any) -> float | None:
        return loss_of(value, minimize=self.minimize)

    def budgets(self) -> Counter[int]:
        """How many runs were handed out at each budget (for reports and tests)."""
        return Counter(int(j.parameters[BUDGET_KEY]) for b in self.brackets for r in b.rungs
                       for j in r if j.handed)


def _key(parameters: Any) -> str:
    return json.dumps(parameters, sort_keys=True, default=str)
