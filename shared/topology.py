"""RabbitMQ topology as data: exchanges, queues, bindings and their arguments.

Every service declares all of it at start (declarations are idempotent), so the order in
which services start does not matter. Work queues are quorum queues with a delivery limit,
so a message that keeps failing is dead-lettered instead of looping. Delays (tickets, retry
back-off) use classic queues with a queue-wide TTL that dead-letter back to the events
exchange with the message's own routing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AML_KILL_QUEUE",
    "AML_WATCH_QUEUE",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "DELAY_BUCKETS",
    "DELAY_EXCHANGE",
    "DELAY_HEADER",
    "DISPATCHER_QUEUE",
    "EVENTS_EXCHANGE",
    "INGESTOR_QUEUE",
    "QUEUES",
    "SUBMIT_QUEUE",
    "TUNER_QUEUE",
    "ExchangeSpec",
    "QueueSpec",
    "delay_bucket_for",
    "delay_queue_name",
    "replica_control_queue",
]

EVENTS_EXCHANGE = "tunebus.events"
DEAD_LETTER_EXCHANGE = "tunebus.dlx"
DELAY_EXCHANGE = "tunebus.delay"
DEAD_LETTER_QUEUE = "tunebus.dead-letter"

# Seconds; a ticket waits in the largest bucket not longer than what is left, then re-delays.
DELAY_BUCKETS: tuple[float, ...] = (0.2, 1.0, 5.0, 30.0)

DELIVERY_LIMIT = 5

# The header that picks a delay queue. Not "x-" prefixed: a headers exchange ignores x- headers
# when matching, so a binding on one would match every message (one copy per delay queue).
DELAY_HEADER = "tunebus-delay-bucket"


@dataclass(frozen=True)
class ExchangeSpec:
    """An exchange to declare."""

    name: str
    type: str  # "topic" | "headers" | "fanout" | "direct"


@dataclass(frozen=True)
class QueueSpec:
    """A queue, its arguments and the routing keys it is bound to on ``exchange``."""

    name: str
    bindings: tuple[str, ...]
    exchange: str = EVENTS_EXCHANGE
    quorum: bool = True
    single_active_consumer: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    binding_arguments: dict[str, Any] | None = None
    exclusive: bool = False
    auto_delete: bool = False

    def declare_arguments(self) -> dict[str, Any]:
        """The x-arguments RabbitMQ gets for this queue."""
        args: dict[str, Any] = dict(self.arguments)
        if self.quorum:
            args.setdefault("x-queue-type", "quorum")
            args.setdefault("x-delivery-limit", DELIVERY_LIMIT)
            args.setdefault("x-dead-letter-exchange", DEAD_LETTER_EXCHANGE)
        if self.single_active_consumer:
            args["x-single-active-consumer"] = True
        return args


EXCHANGES: tuple[ExchangeSpec, ...] = (
    ExchangeSpec(EVENTS_EXCHANGE, "topic"),
    ExchangeSpec(DEAD_LETTER_EXCHANGE, "topic"),
    ExchangeSpec(DELAY_EXCHANGE, "headers"),
)

# The dispatcher and the tuner keep per-experiment order: one active consumer at a time,
# a standby replica takes over when it goes away.
DISPATCHER_QUEUE = QueueSpec(
    "tunebus.dispatcher",
    bindings=(
        "experiment.start", "experiment.stop", "experiment.resume", "experiment.update", "experiment.error",
        "trial.suggested",
        "trial.status", "trial.progress", "trial.ended", "trial.stop_request", "trial.heartbeat",
        "ticket.dispatcher.tick",
    ),
    single_active_consumer=True,
)
TUNER_QUEUE = QueueSpec(
    "tunebus.tuner",
    bindings=("suggest.request", "trial.metric", "trial.ended", "experiment.status"),
    single_active_consumer=True,
)
# Competing consumers: any submitter replica takes any job.
SUBMIT_QUEUE = QueueSpec("tunebus.submit", bindings=("trial.submit",))
AML_WATCH_QUEUE = QueueSpec("tunebus.aml-watch", bindings=("ticket.aml.watch",))
# Kills of AML runs: any submitter replica can cancel any run (local processes are killed
# through each replica's own control queue instead).
AML_KILL_QUEUE = QueueSpec("tunebus.aml-kill", bindings=("trial.kill",))
INGESTOR_QUEUE = QueueSpec("tunebus.ingestor", bindings=("trial.status", "trial.heartbeat",
                                                          "ticket.ingest.watch"))
DEAD_LETTERS = QueueSpec(
    DEAD_LETTER_QUEUE, bindings=("#",), exchange=DEAD_LETTER_EXCHANGE, quorum=False
)


def delay_queue_name(seconds: float) -> str:
    """The delay queue for one bucket, e.g. ``tunebus.delay.1000ms``."""
    return f"tunebus.delay.{round(seconds * 1000)}ms"


def _delay_queue(seconds: float) -> QueueSpec:
    name = delay_queue_name(seconds)
    return QueueSpec(
        name,
        bindings=("",),
        exchange=DELAY_EXCHANGE,
        quorum=False,
        # No x-dead-letter-routing-key: an expired message keeps its own routing key.
        arguments={"x-message-ttl": round(seconds * 1000), "x-dead-letter-exchange": EVENTS_EXCHANGE},
        binding_arguments={"x-match": "all", DELAY_HEADER: name},
    )


DELAY_QUEUES: tuple[QueueSpec, ...] = tuple(_delay_queue(s) for s in DELAY_BUCKETS)

QUEUES: tuple[QueueSpec, ...] = (
    DISPATCHER_QUEUE, TUNER_QUEUE, SUBMIT_QUEUE, AML_WATCH_QUEUE, AML_KILL_QUEUE, INGESTOR_QUEUE,
    DEAD_LETTERS,
    *DELAY_QUEUES,
)


def delay_bucket_for(seconds_left: float) -> float:
    """The largest delay bucket not longer than ``seconds_left`` (the smallest if none)."""
    fitting = [b for b in DELAY_BUCKETS if b <= seconds_left + 1e-9]
    return max(fitting) if fitting else DELAY_BUCKETS[0]


def replica_control_queue(replica: str) -> QueueSpec:
    """A submitter replica's own queue for commands only it can carry out (killing its processes)."""
    return QueueSpec(
        f"tunebus.submitter.{replica}",
        bindings=("trial.kill",),
        quorum=False,
        exclusive=True,
        auto_delete=True,
    )
