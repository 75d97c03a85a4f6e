"""Custom assessors, as NNI names them: ``className`` in the experiment's stored code, run in the
experiment's worker process like custom tuners (see :mod:`services.tuner.algorithms.custom`)."""

from __future__ import annotations

from typing import Any

from ..custom_process import AlgorithmProcess
from .result import AssessResult

__all__ = ["RemoteAssessor"]


class RemoteAssessor:
    """The user's assessor in the worker; its answers (NNI's ``AssessResult`` or a bool) are read
    there and arrive as ``Good``/``Bad``."""

    def __init__(self, process: AlgorithmProcess, class_name: str) -> None:
        self.process = process
        self.class_name = class_name

    def _call(self, method: str, *args: Any) -> Any:
        return self.process.request({"op": "call", "role": "assessor", "method": method, "args": list(args)})

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        verdict = self._call("assess_trial", trial_job_id, list(trial_history))
        if verdict not in ("Good", "Bad"):
            raise ValueError(f"the worker answered {verdict!r} for assess_trial")
        return AssessResult[verdict]

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        self._call("trial_end", trial_job_id, success)
