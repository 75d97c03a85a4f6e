"""Early-stopping assessors with NNI's interface, built by NNI's names and classArgs.

An assessor sees a running trial's intermediate results and answers ``AssessResult.Good`` (keep
going) or ``AssessResult.Bad`` (stop it). ``trial_end`` tells it a trial finished, so finished
trials become the reference for the running ones. Like the tuners, assessors are pure objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .curvefitting import CurvefittingAssessor
from .custom import RemoteAssessor
from .errors import AssessorConfigError
from .medianstop import MedianstopAssessor
from .result import AssessResult

__all__ = [
    "BUILTIN_ASSESSORS",
    "AssessResult",
    "Assessor",
    "AssessorConfigError",
    "CurvefittingAssessor",
    "MedianstopAssessor",
    "RemoteAssessor",
    "create_assessor",
]


class Assessor(Protocol):
    """NNI's assessor interface."""

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult: ...
    def trial_end(self, trial_job_id: str, success: bool) -> None: ...


BUILTIN_ASSESSORS: dict[str, Callable[[Mapping[str, Any]], Assessor]] = {
    "Medianstop": MedianstopAssessor.from_class_args,
    "Curvefitting": CurvefittingAssessor.from_class_args,
}


def create_assessor(
    name: str | None,
    class_args: Mapping[str, Any] | None,
) -> Assessor:
    """Build a built-in assessor (``Medianstop`` or ``Curvefitting``) from its classArgs (a
    custom one runs in the experiment's worker process: :class:`RemoteAssessor`).

    Raises :class:`AssessorConfigError` naming the assessor and the classArg at fault.
    """
    canonical = {key.lower(): key for key in BUILTIN_ASSESSORS}.get((name or "").lower())
    if canonical is None:
        raise AssessorConfigError(
            str(name), f"unknown assessor; built-in assessors are {', '.join(BUILTIN_ASSESSORS)}"
        )
    if class_args is not None and not isinstance(class_args, Mapping):
        raise AssessorConfigError(canonical, "classArgs must be an object")
    return BUILTIN_ASSESSORS[canonical](class_args or {})
