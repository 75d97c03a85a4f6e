"""What every training backend offers the submitter service, and the job request it gets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.messages import TrialHeartbeat, TrialStatus, TrialStatusChanged

from .trial_env import TrialIdentity

__all__ = ["Backend", "JobRequest", "PermanentSubmitError", "Reporter", "SubmitError"]

#: Publishes a job's status (and, for jobs watched by tickets, their heartbeats).
Reporter = Callable[[TrialStatusChanged | TrialHeartbeat], Awaitable[None]]


class SubmitError(Exception):
    """Submitting failed for a reason that may pass (throttling, a network error): retry."""


class PermanentSubmitError(Exception):
    """Submitting can never work as configured (bad compute target, auth): the trial fails."""


@dataclass(frozen=True)
class JobRequest:
    """One trial attempt to run."""

    who: TrialIdentity
    parameters: dict[str, Any]
    config: dict[str, Any]  # the experiment's wire-form config
    code_dir: Path | None  # the experiment's code, unpacked (None: no code uploaded)
    metrics_url: str  # the attempt's results blob URL with an append-only SAS (sr=b, sp=a)


class Backend(Protocol):
    """A place trials run: local processes, Azure ML runs."""

    platform: str

    async def submit(self, job: JobRequest) -> None:
        """Start the job and report RUNNING through the reporter; later report how it ended.

        Returns once the job is started (or durably submitted), never after the trial's run.
        Raises only when it started nothing: once a job runs, reports are retried, not raised
        (the submission's retry would take the attempt for abandoned).
        """

    async def kill(self, experiment_id: str, trial_id: str, status: TrialStatus, reason: str,
                   attempt: int | None = None) -> bool:
        """Stop the trial's job (only ``attempt``'s, if given) if this replica runs it; True if it did."""

    def running(self) -> dict[str, dict[str, int]]:
        """What this replica runs itself, by experiment: trial id → attempt (for heartbeats)."""

    async def close(self) -> None:
        """Stop watching; local processes are terminated."""
