"""Early-stopping assessors with NNI's interface, built by NNI's names and classArgs.

An assessor sees a running trial's intermediate results and answers ``AssessResult.Good`` (keep
going) or ``AssessResult.Bad`` (stop it). ``trial_end`` tells it a trial finished, so finished
trials become the reference for the running ones. Like the tuners, assessors are pure objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from shared import algorithms

from .curvefitting import CurvefittingAssessor
from .custom import RemoteAssessor
from .errors import AssessorConfigError
from .medianstop import MedianstopAssessor
from .result import AssessResult

__all__ = [
    "BUILDERS",
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


#: How each built-in assessor of :data:`shared.algorithms.ASSESSORS` is built from its checked classArgs.
BUILDERS: dict[str, Callable[[dict[str, Any]], Assessor]] = {
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
    try:
        algorithm = algorithms.find("assessor", name)
    except ValueError:
        raise AssessorConfigError(
            str(name), f"unknown assessor; built-in assessors are {', '.join(algorithms.ASSESSORS)}"
        ) from None
    try:
        checked = algorithms.read_class_args(algorithm, class_args)
    except algorithms.ClassArgsError as exc:
        raise AssessorConfigError(exc.algorithm, exc.reason, exc.argument) from None
    return BUILDERS[algorithm.name](checked)
