"""The experiment summary document: what the dispatcher knows, durable in blob storage.

``experiments/<exp>/state.json`` is written by the dispatcher only, with ETag-conditional
writes. It holds the experiment's fields, its outbox, and only its *active* (not ended)
trials plus counters of the ended ones (by status, the best, how many were created): its size
is bounded by the concurrency, not by the number of trials. Ended trials move to an
append-only log of chunks (:mod:`shared.records`, which also says how the move survives a
crash). Messages the dispatcher must publish as a consequence of a change are stored in the
same write (``outbox``) and published after it, so a crash between the two loses nothing.

A document written before the log existed (every trial in ``trials``, no ``trials_created``)
still validates: ``trials_created`` is then counted from ``trials``, and its ended trials are
read from there (the dispatcher moves them to the log when it next loads the experiment).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_serializer, model_validator

from shared.messages import (
    FINISHED_EXPERIMENT_STATUSES,
    TERMINAL_TRIAL_STATUSES,
    BoundedText,
    ExperimentStatus,
    Message,
    TrialStatus,
)
from shared.secrets_mask import mask_secrets

__all__ = ["ExperimentState", "OutboxEntry", "ReadySuggestion", "TrialRecord", "best_trial", "better_trial",
           "trial_id_for"]


def trial_id_for(experiment_id: str, sequence_id: int) -> str:
    """A short trial id, deterministic so that a redelivered suggestion maps to the same trial."""
    digest = hashlib.sha1(f"{experiment_id}:{sequence_id}".encode()).digest()
    return base64.b32encode(digest).decode()[:8].lower()


class TrialRecord(BaseModel):
    """One trial as the dispatcher knows it."""

    trial_id: str
    sequence_id: int = Field(description="NNI_TRIAL_SEQ_ID and the tuner's parameter id.")
    parameters: dict[str, Any]
    status: TrialStatus = TrialStatus.WAITING
    attempt: int = 1
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    final_value: float | None = None
    last_intermediate: float | None = None
    metric_count: int = 0
    error: BoundedText | None = None
    job_url: str | None = None
    kill_status: TrialStatus | None = Field(
        default=None, description="Set when the dispatcher asked for the trial to be killed."
    )
    kill_reason: str | None = None

    last_heartbeat: datetime | None = None
    job_ended: bool = Field(
        default=False, description="The backend reported the job's end; trial.ended is on its way."
    )
    job_status: TrialStatus | None = Field(
        default=None, description="How the backend said the job ended (sent again if trial.ended is late)."
    )
    job_lost: bool = Field(default=False, description="The job's end is that it was lost.")
    resubmits: int = Field(default=0, description="trial.submit sent again for this attempt (no sign of it).")

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_TRIAL_STATUSES

    @field_serializer("error", "kill_reason")
    def _masked(self, text: str | None) -> str | None:
        # A stderr tail or a traceback may quote a connection string or a SAS URL: never stored.
        return None if text is None else mask_secrets(text)

    def duration_seconds(self, now: datetime | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or now or datetime.now(UTC)
        return (end - self.started_at).total_seconds()


class ReadySuggestion(BaseModel):
    """A suggestion that came back while every slot was busy; submitted when one frees."""

    parameter_id: int
    parameters: dict[str, Any]


class OutboxEntry(BaseModel):
    """A message decided on in a state change and not yet known to be published."""

    routing_key: str
    body: dict[str, Any]

    @classmethod
    def of(cls, msg: Message) -> OutboxEntry:
        """The entry that publishes ``msg``."""
        return cls(routing_key=msg.routing_key, body=msg.model_dump(mode="json"))

    @field_serializer("body")
    def _masked(self, body: dict[str, Any]) -> dict[str, Any]:
        # The texts people read (a reason, an error) are stored masked, like the state's own.
        return {key: mask_secrets(value) if key in ("reason", "error") and isinstance(value, str) else value
                for key, value in body.items()}


class ExperimentState(BaseModel):
    """The dispatcher's durable view of one experiment."""

    experiment_id: str
    status: ExperimentStatus = ExperimentStatus.RUNNING
    reason: BoundedText | None = None
    optimize_mode: str = "maximize"
    started_at: datetime
    ended_at: datetime | None = None
    next_parameter_id: int = Field(default=0, description="The next parameter id to ask the tuner for.")
    requested: list[int] = Field(default_factory=list, description="Parameter ids asked for, not answered.")
    ready: list[ReadySuggestion] = Field(
        default_factory=list, description="Suggestions waiting for a free slot (asked for ahead of time)."
    )
    trials: dict[str, TrialRecord] = Field(
        default_factory=dict, description="The trials not yet moved to the ended log (the active ones).")
    trials_created: int = Field(
        default=0, description="Trials created so far (``maxTrialNumber`` counts them).")
    ended_counts: dict[str, int] = Field(
        default_factory=dict, description="Trials moved to the ended log, by status.")
    best: TrialRecord | None = Field(
        default=None, description="The best of the trials moved to the ended log (optimize mode).")
    ended_logged: int = Field(default=0, description="Ended trials known to be appended to the log.")
    pending_ended: list[TrialRecord] = Field(
        default_factory=list, description="Ended trials counted above, maybe not yet in the log "
                                          "(appended after this write; see shared.records).")
    outbox: list[OutboxEntry] = Field(default_factory=list)
    drain_to: ExperimentStatus | None = Field(
        default=None, description="While STOPPING: the status to end in once no trial is running."
    )
    tick_id: str | None = Field(
        default=None, description="The one live tick chain: its tickets carry it as ``state.chain``.")
    # Memory only (never written: a tick that decides nothing leaves the stored state as it is).
    tick_due: datetime | None = Field(
        default=None, exclude=True,
        description="When the live chain's next tick is due (one overdue for long was lost: re-armed).")
    tick_chain_since: datetime | None = Field(
        default=None, exclude=True, description="When the live tick chain was started or renewed.")
    requested_at: datetime | None = Field(
        default=None, description="Since when suggestions are asked for and not all answered.")
    reasks: int = Field(default=0, description="Suggestion requests sent again since the last answer.")
    seen_starts: list[str] = Field(default_factory=list, description="Start message ids applied.")
    resumed_at: datetime | None = Field(default=None, description="When it was last resumed.")
    updated_limits: dict[str, int | float] = Field(
        default_factory=dict,
        description="Limits changed since the start (``tunebus update``), by NNI config name; they "
                    "override experiment.json's.",
    )
    ran_before_resume: float = Field(
        default=0.0, description="Seconds it ran before its last resume (stopped time does not count)."
    )

    @model_validator(mode="before")
    @classmethod
    def _count_old_format(cls, data: Any) -> Any:
        # A document from before the ended log: every trial it created is in ``trials``.
        if isinstance(data, dict) and "trials_created" not in data and isinstance(data.get("trials"), dict):
            return {**data, "trials_created": len(data["trials"])}
        return data

    @field_serializer("reason")
    def _masked(self, text: str | None) -> str | None:
        return None if text is None else mask_secrets(text)

    def elapsed_seconds(self, now: datetime) -> float:
        """How long the experiment has run, for ``maxExperimentDuration``: not while it was stopped."""
        since = self.resumed_at or self.started_at
        return self.ran_before_resume + ((self.ended_at or now) - since).total_seconds()

    def trials_by_status(self) -> dict[str, int]:
        """Every trial's status counted: the ended log's counts and the trials still here."""
        counts = dict(self.ended_counts)
        for trial in self.trials.values():
            counts[trial.status.value] = counts.get(trial.status.value, 0) + 1
        return counts

    def running(self) -> list[TrialRecord]:
        return [t for t in self.trials.values() if not t.ended]

    def by_sequence(self) -> list[TrialRecord]:
        """The trials in this document (not those in the ended log) by sequence id."""
        return sorted(self.trials.values(), key=lambda t: t.sequence_id)

    @property
    def ended_total(self) -> int:
        """How many trials have ended (those in the ended log and those still here)."""
        return sum(self.ended_counts.values()) + sum(1 for t in self.trials.values() if t.ended)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_EXPERIMENT_STATUSES


def best_trial(state: ExperimentState) -> TrialRecord | None:
    """The trial with the best final result for the experiment's optimize mode (of the ended
    log's best and the trials still in the document)."""
    return better_trial(state.optimize_mode, [state.best, *state.trials.values()])


def better_trial(optimize_mode: str, trials: Iterable[TrialRecord | None]) -> TrialRecord | None:
    """The trial with the best final result of ``trials`` (the first of equals), or None."""
    scored = [t for t in trials if t is not None and t.final_value is not None]
    if not scored:
        return None
    pick = max if optimize_mode == "maximize" else min
    return pick(scored, key=lambda t: t.final_value if t.final_value is not None else 0.0)
