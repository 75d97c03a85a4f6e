"""What every built-in tuner shares: NNI's tuner methods, history, pending trials and deduplication.

A subclass implements :meth:`BaseTuner._suggest` (internal values for one new trial) and may react
to new observations through :meth:`BaseTuner._on_observation`. Everything here is pure: no I/O,
no threads, and every random draw comes from a generator seeded by (experiment seed, parameter id),
so the same calls in the same order give the same suggestions.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.metric_rule import metric_number
from shared.search_space import (
    ParamPath,
    ParamSpec,
    build_parameters,
    flatten_search_space,
    is_active,
    parse_parameters,
    sample_internal,
)

from .errors import NoMoreTrials, suggest_each
from .finite import enumerate_points, space_size

__all__ = ["BaseTuner", "Internal", "Observation", "parameter_seed"]

Internal = dict[ParamPath, float]

#: How many fresh draws a tuner gets to replace a duplicate before falling back to enumeration.
_DEDUP_ATTEMPTS = 32


@dataclass(frozen=True)
class Observation:
    """A finished trial as the algorithms see it: internal values and a loss (lower is better)."""

    internal: Internal
    loss: float
    parameters: dict[str, Any]  # as the trial saw them, to re-read under a changed search space


def parameter_seed(seed: int, parameter_id: Any) -> np.random.Generator:
    """The generator for one suggestion, derived from the experiment seed and the parameter id."""
    if isinstance(parameter_id, int | np.integer) and parameter_id >= 0:
        key = int(parameter_id)
    else:  # NNI ids are ints, but a service may use strings; crc32 is stable across processes
        key = zlib.crc32(str(parameter_id).encode())
    return np.random.default_rng([seed, key])


class BaseTuner:
    """NNI's tuner interface over a flat search space; see the module docstring."""

    #: The name users give in ``tuner.name``; used in messages.
    name = "Tuner"

    def __init__(self, *, seed: int | None = None, minimize: bool = True) -> None:
        if seed is None:  # still reproducible: the chosen seed is visible as ``self.seed``
            seed = int(np.random.default_rng().integers(2**31))
        self.seed = int(seed)
        self.minimize = minimize
        self.specs: list[ParamSpec] = []
        self.history: list[Observation] = []
        self.pending: dict[Any, Internal] = {}
        self._seen: set[str] = set()
        self._finished_ids: set[Any] = set()
        self._size: int | None = None
        self._search_space: dict[str, Any] | None = None

    # ------------------------------------------------------------ NNI's methods

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        """Validate and adopt a search space; past results that still fit it are kept."""
        specs = flatten_search_space(search_space)
        self._search_space = search_space
        self.specs = specs
        self._size = space_size(specs)
        kept = [self._refit(o) for o in self.history]
        self.history = [o for o in kept if o is not None]
        self.pending.clear()
        self._on_search_space()
        for observation in self.history:
            self._on_observation(observation)

    def generate_parameters(self, parameter_id: Any, **kwargs: Any) -> dict[str, Any]:
        """Suggest parameters for a new trial, never repeating earlier ones; NoMoreTrials when exhausted."""
        if not self.specs:
            raise RuntimeError(f"tuner '{self.name}': update_search_space must be called first")
        if parameter_id in self.pending:  # a redelivered request: answer as before
            return build_parameters(self.specs, self.pending[parameter_id])
        rng = parameter_seed(self.seed, parameter_id)
        internal = self._deduplicate(self._suggest(parameter_id, rng), rng)
        parameters = build_parameters(self.specs, internal)
        # Keep what the trial really gets (after rounding), so the model learns about that point.
        self.pending[parameter_id] = self._parse(parameters) or internal
        return parameters

    def generate_multiple_parameters(
        self, parameter_id_list: Sequence[Any], **kwargs: Any
    ) -> list[dict[str, Any]]:
        """One suggestion per id, in order; stops early (like NNI) when the space is exhausted."""
        return suggest_each(lambda parameter_id: self.generate_parameters(parameter_id, **kwargs),
                            parameter_id_list)

    def receive_trial_result(
        self, parameter_id: Any, parameters: dict[str, Any], value: Any, **kwargs: Any
    ) -> None:
        """Learn from a trial's final result (a number, or a dict with ``default``)."""
        if parameter_id is not None and parameter_id in self._finished_ids:
            return  # at-least-once delivery: a repeated result must not count twice
        internal = self.pending.pop(parameter_id, None)
        if internal is None:
            internal = self._parse(parameters)
        self._finished_ids.add(parameter_id)
        self._add_observation(internal, parameters, value)

    def trial_end(self, parameter_id: Any, success: bool, **kwargs: Any) -> None:
        """A trial is over; one that never reported stops counting as pending."""
        self.pending.pop(parameter_id, None)

    def import_data(self, data: Iterable[Mapping[str, Any]]) -> int:
        """Learn from earlier trials (``{"parameter": ..., "value": ...}``); returns how many were learned.

        A record without a usable value (a trial still running, or one that failed) is not learned
        from, but its parameters count as tried, so they are never suggested again.
        """
        used = 0
        for record in data:
            parameters = record.get("parameter")
            if not isinstance(parameters, Mapping):
                continue
            internal = self._parse(parameters)
            if internal is not None and self._add_observation(internal, parameters, record.get("value")):
                used += 1
        return used

    # ------------------------------------------------------------ hooks for the algorithms

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        """Internal values for a new trial; the default draws from the prior."""
        return self._sample_prior(rng)

    def _on_search_space(self) -> None:
        """Called after the search space changed (``self.specs`` is set)."""

    def _on_observation(self, observation: Observation) -> None:
        """Called for every new finished trial with a finite loss."""

    # ------------------------------------------------------------ helpers

    def _sample_prior(self, rng: np.random.Generator) -> Internal:
        internal: Internal = {}
        for spec in self.specs:
            if is_active(spec, internal):
                internal[spec.path] = sample_internal(spec, rng)
        return internal

    def _key(self, internal: Mapping[ParamPath, float]) -> str:
        """Identity of a suggestion as the trial sees it (after rounding)."""
        return json.dumps(build_parameters(self.specs, internal), sort_keys=True, default=str)

    def _is_seen(self, internal: Internal) -> bool:
        return self._key(internal) in self._seen

    def _deduplicate(self, internal: Internal, rng: np.random.Generator) -> Internal:
        key = self._key(internal)
        attempts = 0
        while key in self._seen and attempts < _DEDUP_ATTEMPTS:
            internal = self._sample_prior(rng)
            key = self._key(internal)
            attempts += 1
        if key in self._seen:
            internal = self._unseen_point(rng)
            key = self._key(internal)
        self._seen.add(key)
        return internal

    def _unseen_point(self, rng: np.random.Generator) -> Internal:
        """A random point never suggested before, by enumeration of a finite space."""
        if self._size is None:  # an infinite space: a repeat after many draws means a tiny continuous range
            raise NoMoreTrials(f"tuner '{self.name}': cannot find a new point in the search space")
        unseen = [p for p in enumerate_points(self.specs) if self._key(p) not in self._seen]
        if not unseen:
            raise NoMoreTrials(f"tuner '{self.name}': all {self._size} points of the search space were tried")
        return unseen[int(rng.integers(len(unseen)))]

    def _parse(self, parameters: Mapping[str, Any]) -> Internal | None:
        try:
            return parse_parameters(self.specs, parameters)
        except (KeyError, ValueError, TypeError, IndexError):
            return None  # a trial from another space: it cannot teach this model anything

    def _refit(self, observation: Observation) -> Observation | None:
        internal = self._parse(observation.parameters)
        return None if internal is None else Observation(internal, observation.loss, observation.parameters)

    def _add_observation(self, internal: Internal | None, parameters: Mapping[str, Any], value: Any) -> bool:
        if internal is not None:
            self._seen.add(self._key(internal))
        try:
            loss = metric_number(value)
        except ValueError:
            return False
        loss = loss if self.minimize else -loss
        if internal is None or not math.isfinite(loss):
            return False  # a failed or diverged trial: keep it out of the model
        observation = Observation(internal, loss, build_parameters(self.specs, internal))
        self.history.append(observation)
        self._on_observation(observation)
        return True
