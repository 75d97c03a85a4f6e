"""RabbitMQ topology as data: exchanges, queues, bindings and their arguments.

Every service declares all of it at start (declarations are idempotent), so the order in
which services start does not matter. Work queues are quorum queues with a delivery limit,
so a message that keeps failing is dead-lettered instead of looping. Delays (tickets, retry
back-off) use classic queues with a queue-wide TTL that dead-letter back to the events
exchange with the message's own routing key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
    "DISPATCHER_SHARDS",
    "EVENTS_EXCHANGE",
    "EXPERIMENT_HEADER",
    "INGESTOR_QUEUE",
    "LEGACY_QUEUES",
    "QUEUES",
    "REPLICAS_EXCHANGE",
    "SHARDED",
    "SHARDS",
    "SUBMIT_QUEUE",
    "TICKET_LATENESS",
    "TUNER_QUEUE",
    "TUNER_SHARDS",
    "ExchangeSpec",
    "QueueSpec",
    "ShardedQueues",
    "delay_bucket_for",
    "delay_queue_name",
    "event_routing_keys",
    "replica_control_queue",
    "replicas_queue",
    "shard_count",
]

EVENTS_EXCHANGE = "tunebus.events"
DEAD_LETTER_EXCHANGE = "tunebus.dlx"
DELAY_EXCHANGE = "tunebus.delay"
DEAD_LETTER_QUEUE = "tunebus.dead-letter"
REPLICAS_EXCHANGE = "tunebus.replicas"
# The header every message carries with its experiment id: what the shards are hashed on.
EXPERIMENT_HEADER = "tunebus-experiment"
DEFAULT_SHARDS = 8
MAX_SHARDS = 64

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
    type: str  # "topic" | "headers" | "fanout" | "direct" | "x-consistent-hash"
    arguments: dict[str, Any] = field(default_factory=dict)


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
    # Replicas of a sharded service announce themselves here (routing key: the service).
    ExchangeSpec(REPLICAS_EXCHANGE, "topic"),
)

# The dispatcher's and the tuner's messages, partitioned by experiment (see ShardedQueues):
# the queues of the single active consumer that came before the shards, drained into the shards
# by a replica that starts (shared.shards.migrate_legacy_queue). Not declared any more.
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
    bindings=("suggest.request", "suggest.withdrawn", "trial.metric", "trial.ended", "experiment.status"),
    single_active_consumer=True,
)


@dataclass(frozen=True)
class ShardedQueues:
    """One service's messages split over ``count`` queues by experiment, each with a single active
    consumer, so replicas share the experiments and each experiment's messages stay in order.

    The events exchange passes the service's routing keys to its own consistent-hash exchange
    (an exchange-to-exchange binding), which hashes the experiment id a publisher puts in the
    :data:`EXPERIMENT_HEADER` header: an experiment's messages always reach the same shard (as
    long as the shards stay the same). A retry (a delay queue dead-lettering back to the events
    exchange with the message's headers) comes back to the same shard.
    """

    service: str
    bindings: tuple[str, ...]
    count: int

    @property
    def exchange(self) -> str:
        """The consistent-hash exchange, e.g. ``tunebus.dispatcher.shards``."""
        return f"tunebus.{self.service}.shards"

    def exchange_spec(self) -> ExchangeSpec:
        return ExchangeSpec(self.exchange, "x-consistent-hash", {"hash-header": EXPERIMENT_HEADER})

    def queue(self, index: int) -> QueueSpec:
        """Shard ``index``'s queue, e.g. ``tunebus.dispatcher.shard-3``: bound with weight 1."""
        if not 0 <= index < self.count:
            raise ValueError(f"shard {index} is not one of the {self.count} shards of {self.service}")
        return QueueSpec(f"tunebus.{self.service}.shard-{index}", bindings=("1",), exchange=self.exchange,
                         single_active_consumer=True)

    def queues(self) -> tuple[QueueSpec, ...]:
        return tuple(self.queue(i) for i in range(self.count))

    def retired_queues(self) -> tuple[QueueSpec, ...]:
        """Shard queues a deployment with more shards had (up to :data:`MAX_SHARDS`): drained
        into the present shards and deleted when a replica starts (Bus.drain_retired_queue)."""
        bigger = ShardedQueues(self.service, self.bindings, MAX_SHARDS)
        return tuple(bigger.queue(i) for i in range(self.count, MAX_SHARDS))


def shard_count(environ: Mapping[str, str] | None = None) -> int:
    """How many shards the dispatcher and the tuner each have (``TUNEBUS_SHARDS``, default 8).

    Every component of a deployment must see the same number: it decides which queues exist.
    Changing it moves experiments between shards (drain the old shards first: docs/architecture.md).
    """
    raw = (os.environ if environ is None else environ).get("TUNEBUS_SHARDS", str(DEFAULT_SHARDS)).strip()
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_SHARDS:
        raise ValueError(f"TUNEBUS_SHARDS: want a whole number from 1 to {MAX_SHARDS}, got {raw!r}")
    return int(raw)


SHARDS = shard_count()
DISPATCHER_SHARDS = ShardedQueues("dispatcher", DISPATCHER_QUEUE.bindings, SHARDS)
TUNER_SHARDS = ShardedQueues("tuner", TUNER_QUEUE.bindings, SHARDS)
SHARDED: tuple[ShardedQueues, ...] = (DISPATCHER_SHARDS, TUNER_SHARDS)

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

#: The legacy single queues and the sharded services that replaced them.
LEGACY_QUEUES: tuple[tuple[QueueSpec, ShardedQueues], ...] = (
    (DISPATCHER_QUEUE, DISPATCHER_SHARDS), (TUNER_QUEUE, TUNER_SHARDS),
)

QUEUES: tuple[QueueSpec, ...] = (
    *DISPATCHER_SHARDS.queues(), *TUNER_SHARDS.queues(),
    SUBMIT_QUEUE, AML_WATCH_QUEUE, AML_KILL_QUEUE, INGESTOR_QUEUE,
    DEAD_LETTERS,
    *DELAY_QUEUES,
)


#: How late a ticket may come back, as a share of what was left when it was parked: a tick due in
#: 1 s, parked some milliseconds after it was decided, waits in the 1-s bucket (one hop), not in
#: the 0.2-s one five times over (five deliveries, each handled and parked again).
TICKET_LATENESS = 0.25


def delay_bucket_for(seconds_left: float, *, lateness: float = 0.0) -> float:
    """The largest delay bucket not longer than ``seconds_left`` (the smallest if none); with
    ``lateness``, buckets up to that share longer fit too."""
    fitting = [b for b in DELAY_BUCKETS if b <= seconds_left * (1 + lateness) + 1e-9]
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


def replicas_queue(service: str, replica: str) -> QueueSpec:
    """A sharded service replica's own queue of its peers' announcements (shared.shards)."""
    return QueueSpec(f"tunebus.replicas.{service}.{replica}", bindings=(service,), exchange=REPLICAS_EXCHANGE,
                     quorum=False, exclusive=True, auto_delete=True)


def event_routing_keys() -> tuple[str, ...]:
    """Every routing key bound on the events exchange (queues' and sharded services' bindings)."""
    keys = {key for spec in QUEUES if spec.exchange == EVENTS_EXCHANGE for key in spec.bindings}
    keys |= {key for sharded in SHARDED for key in sharded.bindings}
    return tuple(sorted(keys))
