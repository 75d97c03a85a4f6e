"""Custom assessors, as NNI loads them: ``className`` ("module.Class") found in ``codeDirectory``
(loaded per experiment, like custom tuners: see :mod:`services.tuner.algorithms.custom`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..algorithms.custom import load_custom_class
from .errors import AssessorConfigError
from .result import AssessResult

__all__ = ["CustomAssessor", "load_custom_assessor"]

REQUIRED_METHODS = ("assess_trial",)


def load_custom_assessor(
    class_name: str, code_directory: str | None, class_args: Mapping[str, Any]
) -> CustomAssessor:
    """Import and build the user's assessor; :class:`AssessorConfigError` names what is wrong."""
    return CustomAssessor(load_custom_class(class_name, code_directory, class_args, REQUIRED_METHODS,
                                            AssessorConfigError))


class CustomAssessor:
    """A user's assessor object, its answers read as NNI reads them."""

    def __init__(self, assessor: Any) -> None:
        self.assessor = assessor

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        """Forwarded; NNI's own ``AssessResult`` (its Good is True, its Bad False) or a bool is read."""
        answer = self.assessor.assess_trial(trial_job_id, trial_history)
        value = getattr(answer, "value", answer)
        if isinstance(value, bool):
            return AssessResult(value)
        if getattr(answer, "name", None) in ("Good", "Bad"):
            return AssessResult[answer.name]
        raise TypeError(f"assess_trial must return AssessResult.Good or AssessResult.Bad, got {answer!r}")

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        """Forwarded if the user's assessor has it (NNI's default does nothing)."""
        method = getattr(self.assessor, "trial_end", None)
        if callable(method):
            method(trial_job_id, success)
