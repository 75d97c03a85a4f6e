"""Errors raised by tuning algorithms."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from shared import algorithms
from shared.algorithms import ClassArgsError

__all__ = ["NoMoreTrials", "TunerConfigError", "WaitForResults", "refuse_unsupported_space", "suggest_each"]


class TunerConfigError(ClassArgsError):
    """A tuner name or one of its classArgs is wrong; the message names the tuner and the argument."""

    def __init__(self, tuner: str, reason: str, argument: str | None = None) -> None:
        super().__init__("tuner", tuner, reason, argument)
        self.tuner = tuner


class NoMoreTrials(Exception):
    """Every point of a finite search space has been suggested (NNI's ``NoMoreTrialError``)."""


class WaitForResults(Exception):
    """Nothing to suggest until running trials report (an advisor between two rounds of a bracket).

    The service keeps the request and answers it after a later trial ends."""


def refuse_unsupported_space(tuner: str, search_space: Any) -> None:
    """Raise :class:`TunerConfigError` for a search space the built-in ``tuner`` cannot take
    (its registry entry's rules, :func:`shared.algorithms.search_space_problem`)."""
    problem = algorithms.search_space_problem(algorithms.TUNERS[tuner], search_space)
    if problem is not None:
        raise TunerConfigError(tuner, problem)


def suggest_each(generate: Callable[[Any], Any], parameter_ids: Iterable[Any]) -> list[Any]:
    """NNI's ``generate_multiple_parameters``: one suggestion per id, in order, stopping at the first
    id the algorithm cannot answer now (:class:`NoMoreTrials`, :class:`WaitForResults`)."""
    out: list[Any] = []
    for parameter_id in parameter_ids:
        try:
            out.append(generate(parameter_id))
        except (NoMoreTrials, WaitForResults):
            break
    return out
