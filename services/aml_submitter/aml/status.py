"""Azure ML run statuses and what they mean for a tunebus trial.

A status word tunebus does not know is treated as not final (the run is watched on) and logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from shared.messages import TrialStatus

__all__ = [
    "ACTIVE_STATUSES",
    "NOT_RESPONDING_LIMIT",
    "TERMINAL_STATUSES",
    "WAITING_STATUSES",
    "AmlRunStatus",
    "failure_reason",
    "is_terminal",
    "trial_status_for",
]


class AmlRunStatus(StrEnum):
    """Every status an Azure ML run reports, and the tunebus trial status it means.

    AML reports a run as one of these words (``azureml._restclient.constants.RunStatus`` in
    azureml-core 1.61, all fifteen, and SDK v2's job statuses, which use the same words):

    ==================  ==================  =====================================================
    AML status          tunebus trial       why
    ==================  ==================  =====================================================
    NotStarted          WAITING             accepted, not yet scheduled
    Unapproved          WAITING             waiting for a quota approval before it may be scheduled
    Queued              WAITING             waiting for a node of the compute cluster
    Preparing           WAITING             building / pulling the image, downloading the snapshot
    Provisioning        WAITING             the cluster is scaling up a node for it
    Starting            WAITING             the node is starting the container
    Running             RUNNING             the trial command runs
    Finalizing          RUNNING             the command ended; AML uploads outputs. Not an end yet:
                                            the outcome (Completed or Failed) is still to come
    CancelRequested     RUNNING             cancel accepted; the command may still run and write
                                            metrics until AML reports Canceled
    Pausing             RUNNING             being paused (it has run; its slot is still taken)
    Paused              RUNNING             paused, may resume: not an end, the slot stays taken and
                                            tunebus's maxTrialDuration keeps counting
    Completed           SUCCEEDED           the command exited 0
    Failed              FAILED              the command (or the environment) failed
    Canceled            USER_CANCELED       cancelled (tunebus reports the status the kill asked for)
    NotResponding       RUNNING (for now)   see below
    ==================  ==================  =====================================================
    """

    NOT_STARTED = "NotStarted"
    UNAPPROVED = "Unapproved"
    QUEUED = "Queued"
    PREPARING = "Preparing"
    PROVISIONING = "Provisioning"
    STARTING = "Starting"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    CANCEL_REQUESTED = "CancelRequested"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"
    NOT_RESPONDING = "NotResponding"
    PAUSING = "Pausing"
    PAUSED = "Paused"


#: Seconds a run may stay NotResponding before the trial is failed (and the run cancelled).
#: NotResponding: AML has stopped hearing from the run's node, and it may recover (a transient
#: network problem) or not (the node is gone). tunebus keeps treating the run as running and
#: keeps watching; only when the run has been NotResponding for longer than
#: ``NOT_RESPONDING_LIMIT`` does the watcher give up: it cancels the run and fails the trial with
#: that reason. Failing at the first NotResponding would throw away trials that recover;
#: never giving up would hold a slot for ever.
NOT_RESPONDING_LIMIT = 30 * 60.0

WAITING_STATUSES = frozenset({
    AmlRunStatus.NOT_STARTED, AmlRunStatus.UNAPPROVED, AmlRunStatus.QUEUED, AmlRunStatus.PREPARING,
    AmlRunStatus.PROVISIONING, AmlRunStatus.STARTING,
})
ACTIVE_STATUSES = frozenset({
    AmlRunStatus.RUNNING, AmlRunStatus.FINALIZING, AmlRunStatus.CANCEL_REQUESTED,
    AmlRunStatus.NOT_RESPONDING, AmlRunStatus.PAUSING, AmlRunStatus.PAUSED,
})
TERMINAL_STATUSES = frozenset({AmlRunStatus.COMPLETED, AmlRunStatus.FAILED, AmlRunStatus.CANCELED})

_TERMINAL_TRIAL_STATUS = {
    AmlRunStatus.COMPLETED: TrialStatus.SUCCEEDED,
    AmlRunStatus.FAILED: TrialStatus.FAILED,
    AmlRunStatus.CANCELED: TrialStatus.USER_CANCELED,
}


def _known(status: str) -> AmlRunStatus | None:
    try:
        return AmlRunStatus(status)
    except ValueError:
        return None


def is_terminal(status: str) -> bool:
    """Whether AML will not change this run's status again."""
    return _known(status) in TERMINAL_STATUSES


def trial_status_for(status: str, *, canceled_as: TrialStatus = TrialStatus.USER_CANCELED) -> TrialStatus:
    """The trial status an AML run status means (the table: :class:`AmlRunStatus`).

    ``canceled_as`` is what a Canceled run ends as: the status its kill asked for
    (EARLY_STOPPED, SYS_CANCELED...), USER_CANCELED when nobody in tunebus asked.
    An unknown status word maps to WAITING (not final).
    """
    known = _known(status)
    if known is None or known in WAITING_STATUSES:
        return TrialStatus.WAITING
    if known in ACTIVE_STATUSES:
        return TrialStatus.RUNNING
    if known == AmlRunStatus.CANCELED:
        return canceled_as
    return _TERMINAL_TRIAL_STATUS[known]


#: The longest error text kept from a failed run (its tail: AML puts the cause last).
ERROR_CHARS = 4000


def failure_reason(details: Mapping[str, Any]) -> str | None:
    """The error of a failed run from ``run.get_details()``, as one readable string."""
    error = details.get("error")
    while isinstance(error, Mapping) and isinstance(error.get("error"), Mapping):
        error = error["error"]  # AML nests it: {"error": {"code": ..., "message": ...}}
    if error is None or error == {}:
        return None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        text = f"{code}: {message}" if code and message else str(message or code or json.dumps(error))
    else:
        text = str(error)
    return text[-ERROR_CHARS:]
