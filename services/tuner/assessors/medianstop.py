"""NNI's ``Medianstop``: the median stopping rule of Google Vizier.

A running trial is stopped at step t when its best value so far is strictly worse than the median
of the completed trials' running averages at step t. Only trials that ended successfully and
reached step t count; before ``start_step`` results, or with no such trial, the answer is Good.
"""

from __future__ import annotations

from typing import Any

from .result import AssessResult, scalar_history

__all__ = ["MedianstopAssessor"]


class MedianstopAssessor:
    """See the module docstring; ``maximize`` says whether higher metrics are better."""

    name = "Medianstop"

    def __init__(self, maximize: bool = True, start_step: int = 0) -> None:
        self.maximize = maximize
        self.start_step = start_step
        self._running: dict[str, list[float]] = {}
        self._completed_averages: dict[str, list[float]] = {}

    @classmethod
    def from_class_args(cls, args: dict[str, Any]) -> MedianstopAssessor:
        """Build from its classArgs as :func:`shared.algorithms.read_class_args` checked them."""
        return cls(args["optimize_mode"] == "maximize", args["start_step"])

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        """Good or Bad for a running trial, given all its intermediate results so far."""
        history = scalar_history(trial_history)
        self._running[trial_job_id] = history
        step = len(history)
        if step == 0 or step < self.start_step:
            return AssessResult.Good
        averages = sorted(a[step - 1] for a in self._completed_averages.values() if len(a) >= step)
        if not averages:
            return AssessResult.Good
        if self.maximize:  # NNI takes the lower median when maximizing, the upper one when minimizing
            median = averages[(len(averages) - 1) // 2]
            return AssessResult.Bad if max(history) < median else AssessResult.Good
        median = averages[len(averages) // 2]
        return AssessResult.Bad if min(history) > median else AssessResult.Good

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        """A successful trial becomes a reference; a failed or stopped one is forgotten."""
        history = self._running.pop(trial_job_id, None)
        if success and history:
            total, averages = 0.0, []
            for count, value in enumerate(history, start=1):
                total += value
                averages.append(total / count)
            self._completed_averages[trial_job_id] = averages
