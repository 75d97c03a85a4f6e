"""Errors raised by tuning algorithms."""

from __future__ import annotations

from shared.algorithms import ClassArgsError

__all__ = ["NoMoreTrials", "TunerConfigError", "WaitForResults"]


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
