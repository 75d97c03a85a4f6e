"""NNI's ``Batch`` tuner (alias ``BatchTuner``): run each listed configuration once, in order.

Its search space is not a standard one: a single ``choice`` whose options are whole parameter
sets, e.g. ``{"combine_params": {"_type": "choice", "_value": [{"x": 0, "y": 1}, ...]}}``. Each
trial gets one option as its parameters (not wrapped in ``combine_params``), as NNI's BatchTuner
does; once every option was handed out the tuner says ``NoMoreTrials``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared import algorithms

from .errors import NoMoreTrials, refuse_unsupported_space, suggest_each

__all__ = ["BatchTuner"]


def _key(parameters: Any) -> str:
    return json.dumps(parameters, sort_keys=True, default=str)


class BatchTuner:
    """See the module docstring. Pure and deterministic: there is nothing random in it."""

    name = "Batch"

    def __init__(self) -> None:
        self._configs: list[dict[str, Any]] = []
        self._keys: list[str] = []
        self._given: dict[Any, int] = {}  # parameter id -> index of the configuration handed out
        self._used: set[int] = set()  # indices handed out (or found in imported history)
        self._ready = False

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        """Adopt the list of configurations; refuse anything but one ``choice`` of objects."""
        refuse_unsupported_space(self.name, search_space)
        self._configs = algorithms.batch_configurations(search_space)
        self._keys = [_key(c) for c in self._configs]
        self._given.clear()
        self._used.clear()
        self._ready = True

    def generate_parameters(self, parameter_id: Any, **kwargs: Any) -> dict[str, Any]:
        """The next configuration not run yet (the same one again for a repeated id)."""
        if not self._ready:
            raise RuntimeError(f"tuner '{self.name}': update_search_space must be called first")
        if parameter_id in self._given:
            return dict(self._configs[self._given[parameter_id]])
        index = next((i for i in range(len(self._configs)) if i not in self._used), None)
        if index is None:
            raise NoMoreTrials(f"tuner '{self.name}': all {len(self._configs)} configurations were run")
        self._used.add(index)
        self._given[parameter_id] = index
        return dict(self._configs[index])

    def generate_multiple_parameters(self, parameter_id_list: Sequence[Any], **kwargs: Any) -> list[Any]:
        return suggest_each(self.generate_parameters, parameter_id_list)

    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None:
        """Nothing to learn: every configuration runs once whatever the results."""

    def trial_end(self, parameter_id: Any, success: bool, **kwargs: Any) -> None:
        """Nothing to do: a failed configuration is not run again (as in NNI)."""

    def import_data(self, data: Iterable[Mapping[str, Any]]) -> int:
        """Configurations already run (or running) are not handed out again; returns how many matched.

        A configuration listed twice runs twice: each recorded run uses up one listing of it.
        """
        recorded = Counter(_key(r.get("parameter")) for r in data if isinstance(r.get("parameter"), Mapping))
        matched = 0
        for index, key in enumerate(self._keys):
            if recorded[key] > 0 and index not in self._used:
                recorded[key] -= 1
                self._used.add(index)
                matched += 1
        return matched
