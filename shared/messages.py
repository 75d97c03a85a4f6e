"""Message schemas shared by every tunebus service.

Every message is a pydantic v2 model, JSON on the wire. Each carries a schema version, a
unique message id, the experiment id and the time it was made. A model's ``ROUTING_KEY``
names what happened (events) or what is asked (commands); ``shared.topology`` decides which
queues receive it.

Ids are deterministic where a redelivery must be recognised: a metric's message id is derived
from the trial and its sequence number, so a consumer that sees it twice can tell.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared import limits
from shared.secrets_mask import mask_secrets
from shared.statuses import (
    FINISHED_EXPERIMENT_STATUSES,
    TERMINAL_TRIAL_STATUSES,
    ExperimentStatus,
    MetricKind,
    TrialStatus,
)

__all__ = [
    "FINISHED_EXPERIMENT_STATUSES",
    "MAX_ERROR_CHARS",
    "MAX_SUGGEST_BATCH",
    "SCHEMA_VERSION",
    "TERMINAL_TRIAL_STATUSES",
    "BoundedText",
    "ExperimentError",
    "ExperimentResume",
    "ExperimentStart",
    "ExperimentStatus",
    "ExperimentStatusChanged",
    "ExperimentStop",
    "ExperimentUpdate",
    "Message",
    "MetricKind",
    "SuggestRequest",
    "SuggestionsWithdrawn",
    "Ticket",
    "TrialEnded",
    "TrialHeartbeat",
    "TrialKill",
    "TrialMetric",
    "TrialProgress",
    "TrialStatus",
    "TrialStatusChanged",
    "TrialStopRequested",
    "TrialSubmit",
    "TrialSuggested",
    "bounded_text",
    "message_types",
]

SCHEMA_VERSION = 1


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


#: The most characters of an error or a reason a message carries or the state keeps (their end:
#: a stderr tail's last lines say most), so no report makes a document grow without bound.
MAX_ERROR_CHARS = 8000


def bounded_text(text: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """``text`` cut to its last ``limit`` characters, saying so."""
    if text is None or len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters cut]...{text[-limit:]}"


def _bounded(text: str) -> str:
    return mask_secrets(bounded_text(text) or "")


#: Free text from outside (errors, reasons), kept to :data:`MAX_ERROR_CHARS`, secrets masked (a
#: trial's stderr may print a connection string).
BoundedText = Annotated[str, AfterValidator(_bounded)]

class Message(BaseModel):
    """Fields every message carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ROUTING_KEY: ClassVar[str] = ""

    schema_version: Literal[1] = Field(default=1, description="Wire schema version (SCHEMA_VERSION).")
    message_id: str = Field(default_factory=_new_id, min_length=1, description="Unique id; dedupe key.")
    experiment_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                               description="The experiment this message belongs to.")
    time: datetime = Field(default_factory=_now, description="When the message was made (UTC).")

    @property
    def routing_key(self) -> str:
        """The key it is published with on the events exchange (a ticket's says its purpose)."""
        return self.ROUTING_KEY

    def trace_id(self) -> str:
        """``experiment/trial`` (``experiment`` for a message of no one trial), for trace logs."""
        trial = getattr(self, "trial_id", None)
        return f"{self.experiment_id}/{trial}" if trial else self.experiment_id


# ---------------------------------------------------------------- experiment lifecycle


class ExperimentStart(Message):
    """Start an experiment. Published by ``tunebus create`` or by any program."""

    ROUTING_KEY: ClassVar[str] = "experiment.start"
    config: dict[str, Any] = Field(
        description="The experiment config in NNI's v2 schema (camelCase or snake_case), search space "
                    "inline. Best without secrets (ExperimentConfig.to_wire()): a sharedStorage key goes to "
                    "experiments/<id>/secrets.json; one given here is moved there by the dispatcher."
    )
    code_blob: str | None = Field(
        default=None, description="Blob path of the uploaded trial code archive (tar.gz); none = no code."
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1,
                             description="Experiment seed; derived from the id when absent.")
    algorithm_code: dict[Annotated[str, Field(pattern=r"^(tuner|assessor)$")], str] = Field(
        default_factory=dict,
        description="Blob path of the stored code archive of each custom (className) tuner or "
                    "assessor: experiments/<id>/algorithms/<role>.tar.gz (Layout.algorithm_code_archive), "
                    "uploaded before the start is published. A config's codeDirectory (a host path) is "
                    "refused.",
    )


class ExperimentStop(Message):
    """Stop an experiment: no new trials, running trials are cancelled (USER_CANCELED)."""

    ROUTING_KEY: ClassVar[str] = "experiment.stop"
    reason: BoundedText = Field(default="stopped by user", description="Why, for the record.")


class ExperimentResume(Message):
    """Resume a STOPPED (or ERROR) experiment, as ``nnictl resume``: its trials so far stay, new
    ones start within its limits (``maxExperimentDuration`` counts only the time it ran)."""

    ROUTING_KEY: ClassVar[str] = "experiment.resume"


class ExperimentUpdate(Message):
    """Change an experiment's limits, as ``nnictl update``: while it runs, or before a resume.

    The same caps as the experiment file (:mod:`shared.limits`): an update past them fails
    validation, so the bus dead-letters it with the reason and the experiment is unchanged.
    """

    ROUTING_KEY: ClassVar[str] = "experiment.update"
    trial_concurrency: int | None = Field(
        default=None, ge=1, le=limits.MAX_TRIAL_CONCURRENCY, description="trialConcurrency."
    )
    max_trial_number: int | None = Field(
        default=None, ge=1, le=limits.MAX_TRIAL_NUMBER, description="maxTrialNumber."
    )
    max_experiment_duration: float | None = Field(
        default=None, gt=0, le=limits.MAX_DURATION_SECONDS, allow_inf_nan=False,
        description="maxExperimentDuration, in seconds (at most 365 days).",
    )

    @model_validator(mode="after")
    def _changes_something(self) -> ExperimentUpdate:
        if self.limits() == {}:
            raise ValueError("an update needs at least one of trial_concurrency, max_trial_number, "
                             "max_experiment_duration")
        return self

    def limits(self) -> dict[str, int | float]:
        """The changed limits under their NNI config names (camelCase)."""
        named = {"trialConcurrency": self.trial_concurrency, "maxTrialNumber": self.max_trial_number,
                 "maxExperimentDuration": self.max_experiment_duration}
        return {name: value for name, value in named.items() if value is not None}


class ExperimentStatusChanged(Message):
    """The dispatcher's announcement that an experiment changed status."""

    ROUTING_KEY: ClassVar[str] = "experiment.status"
    status: ExperimentStatus
    reason: BoundedText | None = Field(default=None, description="Why (for ERROR and STOPPED especially).")


class ExperimentError(Message):
    """A service could not go on with the experiment (e.g. the tuner rejected its classArgs)."""

    ROUTING_KEY: ClassVar[str] = "experiment.error"
    service: str = Field(description="The service that failed.")
    reason: BoundedText = Field(description="What went wrong, for the user.")


# ---------------------------------------------------------------- search


#: The most parameter ids one ``suggest.request`` asks for (the dispatcher asks in batches).
MAX_SUGGEST_BATCH = 32


class SuggestRequest(Message):
    """The dispatcher asks the tuner for parameters for these parameter (sequence) ids."""

    ROUTING_KEY: ClassVar[str] = "suggest.request"
    parameter_ids: list[int] = Field(min_length=1, max_length=MAX_SUGGEST_BATCH,
                                     description="NNI parameter ids = trial sequence ids.")


class SuggestionsWithdrawn(Message):
    """The dispatcher will never run these parameter ids (``maxTrialNumber`` was lowered): the
    tuner answers none it still holds and ends those it answered as trials that never ran (an
    advisor's round must not wait for their results)."""

    ROUTING_KEY: ClassVar[str] = "suggest.withdrawn"
    parameter_ids: list[int] = Field(min_length=1, max_length=MAX_SUGGEST_BATCH)


class TrialSuggested(Message):
    """The tuner's answer for one parameter id; ``parameters`` is None when the space is exhausted."""

    ROUTING_KEY: ClassVar[str] = "trial.suggested"
    parameter_id: int = Field(ge=0)
    parameters: dict[str, Any] | None = Field(description="Parameters in NNI's format; None = no more.")


class TrialStopRequested(Message):
    """A request to stop one trial: an assessor's (EARLY_STOPPED) or a user's (USER_CANCELED)."""

    ROUTING_KEY: ClassVar[str] = "trial.stop_request"
    trial_id: str
    reason: BoundedText = Field(description="Who asks and why (which assessor, or the user).")
    status: Literal[TrialStatus.EARLY_STOPPED, TrialStatus.USER_CANCELED] = Field(
        default=TrialStatus.EARLY_STOPPED, description="What the trial ends as."
    )


# ---------------------------------------------------------------- jobs


class TrialSubmit(Message):
    """Command to the submitter pool: run this trial (one AML run or one local process)."""

    ROUTING_KEY: ClassVar[str] = "trial.submit"
    trial_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    sequence_id: int = Field(ge=0, description="NNI_TRIAL_SEQ_ID, also the tuner's parameter id.")
    attempt: int = Field(default=1, ge=1, description="1 for the first run; more after a lost run.")
    parameters: dict[str, Any]
    resubmit: bool = Field(
        default=False,
        description="Sent again by the dispatcher (no sign of the job): a submitter running it already "
                    "ignores it; an Azure ML run is adopted and watched anew.")


class TrialKill(Message):
    """Command: stop this trial's job; it ends with ``status``."""

    ROUTING_KEY: ClassVar[str] = "trial.kill"
    trial_id: str
    status: TrialStatus = Field(description="How the trial ends (EARLY_STOPPED, USER_CANCELED...).")
    reason: BoundedText


class TrialStatusChanged(Message):
    """A backend's report on a trial's job (RUNNING, or how its process/run ended)."""

    ROUTING_KEY: ClassVar[str] = "trial.status"
    trial_id: str
    parameter_id: int = Field(ge=0, description="The trial's sequence id (the tuner's parameter id).")
    attempt: int = Field(default=1, ge=1)
    status: TrialStatus
    exit_code: int | None = None
    error: BoundedText | None = Field(default=None,
                                      description="Failure reason; the stderr tail for a crash.")
    job_url: str | None = Field(default=None, description="Where to see the job (AML portal URL).")
    backend_status: str | None = Field(default=None, description="The backend's own status word.")
    lost: bool = Field(
        default=False,
        description="The job was lost (its submitter went silent): the ingestor ends the trial from "
                    "what it stored (a final result makes it SUCCEEDED), else as lost, to be run again.")


class TrialHeartbeat(Message):
    """A submitter replica still runs these trials (local processes)."""

    ROUTING_KEY: ClassVar[str] = "trial.heartbeat"
    trial_ids: list[str]
    attempts: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, max_length=10_000,
        description="Trial id → the attempt that runs: a beat of an older attempt (left running by a "
                    "replica that stalled) does not keep a newer one alive. Absent from older replicas.")
    replica: str


# ---------------------------------------------------------------- results


class TrialMetric(Message):
    """One metric a trial reported, in order (``sequence`` counts from 0 per trial)."""

    ROUTING_KEY: ClassVar[str] = "trial.metric"
    trial_id: str
    parameter_id: int = Field(ge=0)
    attempt: int = Field(default=1, ge=1, description="The run of the trial that reported it.")
    sequence: int = Field(ge=0)
    kind: MetricKind
    value: float = Field(description="The number the tuner optimises (a dict metric's 'default').")
    raw: Any = Field(default=None, description="What the trial reported, as it reported it.")


class TrialProgress(Message):
    """A running trial's latest intermediate result, for the experiment's record (``trial ls``).

    Published by the ingestor's watch of a running trial; the authoritative count and values
    come with ``trial.ended``.
    """

    ROUTING_KEY: ClassVar[str] = "trial.progress"
    trial_id: str
    parameter_id: int = Field(ge=0)
    attempt: int = Field(default=1, ge=1)
    metric_count: int = Field(ge=1, description="Results reported so far.")
    last_intermediate: float = Field(description="The latest intermediate result.")


class TrialEnded(Message):
    """Authoritative end of a trial, published once its last metric is in."""

    ROUTING_KEY: ClassVar[str] = "trial.ended"
    trial_id: str
    parameter_id: int = Field(ge=0)
    attempt: int = Field(default=1, ge=1)
    status: TrialStatus
    final_value: float | None = Field(default=None, description="The final result, if one was reported.")
    last_intermediate: float | None = Field(default=None, description="The last intermediate result.")
    metric_count: int = Field(default=0, ge=0)
    error: BoundedText | None = None
    lost: bool = Field(default=False, description="Its job was lost with no final result stored: the "
                                                  "dispatcher runs it again while attempts are left.")


# ---------------------------------------------------------------- delayed work


#: The furthest ahead a ticket may be due (watches re-check within minutes).
MAX_TICKET_DELAY = timedelta(days=1)


class Ticket(Message):
    """Delayed, re-published work ("check trial X again at due"). Routed by ``ticket.<purpose>``."""

    ROUTING_KEY: ClassVar[str] = "ticket"
    purpose: Literal["dispatcher.tick", "ingest.watch", "aml.watch"]
    due: datetime = Field(description="Handle no earlier than this.")
    trial_id: str | None = None
    state: dict[str, Any] = Field(default_factory=dict, description="Progress carried between checks.")

    @property
    def routing_key(self) -> str:
        return f"ticket.{self.purpose}"

    @model_validator(mode="after")
    def _due_soon(self) -> Ticket:
        # A ticket waits in delay queues until it is due: one due in years would circle for ever.
        due = self.due if self.due.tzinfo is not None else self.due.replace(tzinfo=UTC)
        if due > datetime.now(UTC) + MAX_TICKET_DELAY:
            raise ValueError(f"due {self.due.isoformat()} is more than {MAX_TICKET_DELAY} ahead")
        return self


def message_types() -> dict[str, type[Message]]:
    """Every concrete message class by its routing key (tickets under ``ticket.*``)."""
    return {cls.ROUTING_KEY: cls for cls in Message.__subclasses__()}
