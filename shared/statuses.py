"""NNI's statuses and metric kinds: the standard library only, so the CLI can use them without
importing pydantic (its start-up stays fast). :mod:`shared.messages` re-exports them."""

from __future__ import annotations

from enum import StrEnum


class TrialStatus(StrEnum):
    """NNI's trial job statuses."""

    WAITING = "WAITING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    USER_CANCELED = "USER_CANCELED"
    SYS_CANCELED = "SYS_CANCELED"
    EARLY_STOPPED = "EARLY_STOPPED"


TERMINAL_TRIAL_STATUSES = frozenset(
    {TrialStatus.SUCCEEDED, TrialStatus.FAILED, TrialStatus.USER_CANCELED,
     TrialStatus.SYS_CANCELED, TrialStatus.EARLY_STOPPED}
)


class ExperimentStatus(StrEnum):
    """NNI's experiment statuses (the subset a tunebus experiment passes through)."""

    RUNNING = "RUNNING"
    NO_MORE_TRIAL = "NO_MORE_TRIAL"
    STOPPING = "STOPPING"
    DONE = "DONE"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


class MetricKind(StrEnum):
    """NNI's metric types: a per-epoch intermediate result or the trial's final result."""

    PERIODICAL = "PERIODICAL"
    FINAL = "FINAL"


#: An experiment in one of these has ended (``tunebus resume`` may start it again).
FINISHED_EXPERIMENT_STATUSES = frozenset(
    {ExperimentStatus.DONE, ExperimentStatus.STOPPED, ExperimentStatus.ERROR})
