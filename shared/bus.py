"""A small bus helper on aio-pika: connect, declare, publish with confirms, consume validated.

Handlers are plain ``async def handle(msg: SomeMessage) -> None`` functions. The bus parses
and validates each delivery into its message class (by routing key), calls the handler, and
acks only after the handler returned — that is, after its effects are durable. A delivery
that does not parse, or whose handler raises :class:`PermanentError`, is copied to the
dead-letter exchange with the reason in its headers and acked; the service keeps running.
That copy has every secret in its body and in its reason masked (:mod:`shared.secrets_mask`: a
start message may carry a storage account key, a reason may quote a connection string or a SAS
URL); one that RabbitMQ dead-letters itself (the
delivery limit) keeps its body as it was, so publishers should not put keys in messages.
Any other exception is treated as transient: the delivery is acked and a copy is parked in a
delay queue (the same ones tickets use), so the consumer goes on with other messages at once
(other experiments never wait behind one that cannot be handled now). The copy comes back to
this queue alone (``x-tunebus-retry-for``; other queues bound to its routing key drop it), with
its attempt count. A :class:`TransientError` (a dependency is down) or a connection error is
retried for about :data:`TRANSIENT_RETRY_SECONDS`; any other exception (a defect, or content no
check caught) only :data:`UNEXPECTED_RETRIES` times; then the message is dead-lettered with the
last error. The quorum queues' delivery limit stays as the guard against a consumer that dies
handling one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import ValidationError

from shared.messages import Message, Ticket, message_types
from shared.secrets_mask import mask_secrets, redact_secrets
from shared.topology import (
    DEAD_LETTER_EXCHANGE,
    DELAY_BUCKETS,
    DELAY_EXCHANGE,
    DELAY_HEADER,
    EVENTS_EXCHANGE,
    EXCHANGES,
    EXPERIMENT_HEADER,
    QUEUES,
    REPLICAS_EXCHANGE,
    SHARDED,
    QueueSpec,
    ShardedQueues,
    delay_bucket_for,
    delay_queue_name,
)

__all__ = [
    "Bus",
    "Consumption",
    "Handler",
    "KeyedLocks",
    "PermanentError",
    "TransientError",
    "parse_message",
    "retry_budget_spent",
    "retry_delay",
]

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[None]]

REASON_HEADER = "x-tunebus-reason"
RETRY_FOR_HEADER = "x-tunebus-retry-for"
RETRY_ATTEMPT_HEADER = "x-tunebus-attempt"
PUBLISH_CONFIRM_TIMEOUT = 10.0
PUBLISH_ATTEMPTS = 3
# Draining a queue the shards replaced stops once it has delivered nothing for this long.
LEGACY_IDLE_SECONDS = 2.0
# A message body larger than this is refused (dead-lettered) before it is parsed.
MAX_BODY_BYTES = 1 << 20
# Retries of a message whose handler raised TransientError: about half an hour in all.
TRANSIENT_RETRY_SECONDS = 1800.0
# Retries of a message whose handler raised anything else (a defect, unforeseen content).
UNEXPECTED_RETRIES = 4


class PermanentError(Exception):
    """The message can never be handled (bad content): dead-letter it with this reason."""


class TransientError(Exception):
    """The handler could not finish now (a dependency is down): retry later."""


def parse_message(routing_key: str, body: bytes) -> Message:
    """Validate a delivery into its message class; raises PermanentError naming what is wrong."""
    types = message_types()
    cls = Ticket if routing_key.startswith("ticket.") else types.get(routing_key)
    if cls is None:
        raise PermanentError(f"no message type for routing key {routing_key!r}")
    if len(body) > MAX_BODY_BYTES:
        raise PermanentError(f"body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentError(f"body is not JSON: {exc}") from exc
    except (RecursionError, ValueError, MemoryError) as exc:  # nesting too deep, a huge number
        raise PermanentError(f"body is not acceptable JSON: {type(exc).__name__}: {exc}"[:500]) from exc
    try:
        msg = cls.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise PermanentError(f"invalid {cls.__name__}: {details}"[:4000]) from exc
    except (RecursionError, ValueError, TypeError, MemoryError) as exc:
        raise PermanentError(f"invalid {cls.__name__}: {type(exc).__name__}: {exc}"[:500]) from exc
    if isinstance(msg, Ticket) and msg.routing_key != routing_key:
        raise PermanentError(f"ticket purpose {msg.purpose!r} does not match routing key {routing_key!r}")
    return msg



def _without_secrets(body: bytes) -> bytes:
    """The body with every secret masked: as JSON if it parses, else as text; as is when it has
    none (or is not text at all)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body
    try:
        doc = json.loads(text)
        clean = redact_secrets(doc)
    except (RecursionError, ValueError, MemoryError):  # not JSON, or past what a parser takes
        clean_text = mask_secrets(text)
        return body if clean_text == text else clean_text.encode()
    return body if clean == doc else json.dumps(clean).encode()


class Bus:
    """One robust connection, one publishing channel (confirms on), one channel per consumer."""

    def __init__(self, url: str, *, service: str, unexpected_retries: int = UNEXPECTED_RETRIES,
                 transient_retry_seconds: float = TRANSIENT_RETRY_SECONDS) -> None:
        self.url = url
        self.service = service
        self.unexpected_retries = unexpected_retries
        self.transient_retry_seconds = transient_retry_seconds
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._events: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._delay: AbstractExchange | None = None
        self._consumers: list[Consumption] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def connect(self, *, attempts: int = 60, delay: float = 1.0) -> None:
        """Connect (retrying while the broker starts) and declare the whole topology."""
        for attempt in range(1, attempts + 1):
            try:
                self._connection = await aio_pika.connect_robust(
                    self.url, client_properties={"connection_name": self.service}
                )
                break
            except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
                if attempt == attempts:
                    raise
                log.warning("broker not reachable (%s); retry %d/%d", exc, attempt, attempts)
                await asyncio.sleep(delay)
        assert self._connection is not None
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._channel.return_callbacks.add(self._on_return)
        await self.declare()

    async def declare(self) -> None:
        """Declare every exchange and queue of the topology (idempotent)."""
        channel = self._require_channel()
        exchanges: dict[str, AbstractExchange] = {}
        for ex in EXCHANGES:
            exchanges[ex.name] = await channel.declare_exchange(ex.name, ex.type, durable=True,
                                                                arguments=ex.arguments or None)
        self._events = exchanges[EVENTS_EXCHANGE]
        self._dlx = exchanges[DEAD_LETTER_EXCHANGE]
        self._delay = exchanges[DELAY_EXCHANGE]
        for sharded in SHARDED:
            hashing = sharded.exchange_spec()
            shards = await channel.declare_exchange(hashing.name, hashing.type, durable=True,
                                                    arguments=hashing.arguments)
            for key in sharded.bindings:
                await shards.bind(self._events, routing_key=key)
        for spec in QUEUES:
            await self._declare_queue(channel, spec)

    async def _declare_queue(self, channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
        queue = await channel.declare_queue(
            spec.name,
            durable=not spec.exclusive,
            exclusive=spec.exclusive,
            auto_delete=spec.auto_delete,
            arguments=spec.declare_arguments(),
        )
        for key in spec.bindings:
            await queue.bind(spec.exchange, routing_key=key, arguments=spec.binding_arguments)
        return queue

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop consuming, wait (bounded) for handlers in flight, close the connection."""
        for consumption in self._consumers:
            with contextlib.suppress(Exception):
                await consumption.queue.cancel(consumption.tag)
        self._consumers.clear()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=grace)
        if self._connection is not None:
            await self._connection.close()

    async def check(self) -> None:
        """Return when the broker answers on this bus's connection now, raise when not: a
        channel opened and closed is one round trip each (the health check)."""
        connection = self._connection
        if connection is None or connection.is_closed:
            raise ConnectionError("not connected to the broker")
        if connection.reconnecting:
            raise ConnectionError("reconnecting to the broker")
        channel = await connection.channel(publisher_confirms=False)
        await channel.close()

    def _require_channel(self) -> AbstractChannel:
        if self._channel is None:
            raise RuntimeError("Bus.connect() was not called")
        return self._channel

    # ------------------------------------------------------------------ publishing

    async def publish(self, msg: Message, *, headers: dict[str, Any] | None = None) -> None:
        """Publish a message on the events exchange; returns once the broker confirmed it.

        A confirm that does not come (the connection broke and is being re-established) is
        waited for a bounded time, then the message is sent again: consumers dedupe by id.
        """
        assert self._events is not None, "Bus.connect() was not called"
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self._events.publish(self._amqp_message(msg, headers), routing_key=msg.routing_key,
                                           mandatory=True, timeout=PUBLISH_CONFIRM_TIMEOUT)
                return
            except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    raise TransientError(f"publishing {msg.routing_key} failed: {exc!r}") from exc
                log.warning("publishing %s failed (attempt %d): %r; again", msg.routing_key, attempt, exc)
                await asyncio.sleep(0.5 * attempt)

    async def publish_many(self, msgs: Iterable[Message]) -> None:
        """Publish several messages in order, each confirmed before the next (order matters)."""
        for msg in msgs:
            await self.publish(msg)

    async def publish_ticket(self, ticket: Ticket) -> None:
        """Publish a ticket now if it is due, else park it in a delay queue until about ``due``."""
        left = (ticket.due - datetime.now(UTC)).total_seconds()
        if left <= 0:
            await self.publish(ticket)
            return
        assert self._delay is not None, "Bus.connect() was not called"
        bucket = delay_queue_name(delay_bucket_for(left))
        await self._delay.publish(
            self._amqp_message(ticket, {DELAY_HEADER: bucket}), routing_key=ticket.routing_key,
        )

    async def dead_letter(self, routing_key: str, body: bytes, reason: str, queue: str) -> None:
        """Copy a delivery to the dead-letter exchange with why and where it failed, secrets masked."""
        assert self._dlx is not None, "Bus.connect() was not called"
        await self._dlx.publish(
            aio_pika.Message(
                _without_secrets(body),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                headers={REASON_HEADER: mask_secrets(reason)[:4000], "x-tunebus-queue": queue,
                         "x-tunebus-service": self.service},
            ),
            routing_key=routing_key or "unrouted",
        )

    @staticmethod
    def _amqp_message(msg: Message, headers: dict[str, Any] | None) -> aio_pika.Message:
        return aio_pika.Message(
            msg.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=msg.message_id,
            type=type(msg).__name__,
            # What the sharded services' consistent-hash exchanges route on.
            headers={**(headers or {}), EXPERIMENT_HEADER: msg.experiment_id},
        )

    def _on_return(self, channel: Any, message: AbstractIncomingMessage) -> None:
        log.warning("unroutable message %s (routing key %s): no queue is bound to it",
                    message.message_id, message.routing_key)

    # ------------------------------------------------------------------ consuming

    async def consume(
        self,
        spec: QueueSpec,
        handlers: dict[type[Message], Handler],
        *,
        prefetch: int = 1,
        concurrency: int = 1,
        per_experiment: bool = False,
    ) -> Consumption:
        """Consume ``spec`` on its own channel and route each message to its type's handler.

        ``concurrency`` 1 handles deliveries strictly in order (dispatcher, tuner); more lets
        up to that many handlers run at once (submitters, ingestors). With ``per_experiment``,
        deliveries of one experiment (:data:`EXPERIMENT_HEADER`) are handled one at a time in
        queue order while other experiments' go on beside them: a slow experiment holds up
        only itself.
        """
        assert self._connection is not None, "Bus.connect() was not called"
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=max(prefetch, concurrency))
        queue = await self._declare_queue(channel, spec)
        consumption = Consumption(spec, queue, channel)
        # aio-pika runs each delivery's callback as its own task, in delivery order; the
        # semaphore's (and the experiment locks') FIFO waiters keep that order, and with
        # concurrency 1 make it strict.
        gate = asyncio.Semaphore(concurrency)
        locks = KeyedLocks()

        async def on_message(delivery: AbstractIncomingMessage) -> None:
            if consumption.stopping:
                return  # left unacked: back to the queue when the channel closes (stop())
            experiment = _text((delivery.headers or {}).get(EXPERIMENT_HEADER, ""))
            async with locks.hold(experiment if per_experiment else ""), gate:
                if consumption.stopping:
                    return
                task = asyncio.current_task()
                if task is not None:
                    self._in_flight.add(task)
                    consumption.in_flight.add(task)
                consumption.saw(experiment)
                try:
                    await self._handle(spec, handlers, delivery)
                finally:
                    if task is not None:
                        self._in_flight.discard(task)
                        consumption.in_flight.discard(task)

        if not per_experiment:
            locks = KeyedLocks(shared=True)
        consumption.tag = await queue.consume(on_message)
        self._consumers.append(consumption)
        return consumption

    async def consume_raw(self, spec: QueueSpec,
                          callback: Callable[[AbstractIncomingMessage], Awaitable[None]]) -> None:
        """Consume ``spec`` (an exclusive queue of this process's) without acks or validation."""
        assert self._connection is not None, "Bus.connect() was not called"
        channel = await self._connection.channel(publisher_confirms=False)
        queue = await self._declare_queue(channel, spec)
        await queue.consume(callback, no_ack=True)

    async def announce(self, routing_key: str, body: bytes) -> None:
        """Publish a transient note on the replicas exchange (replicas of a sharded service)."""
        channel = self._require_channel()
        exchange = await channel.get_exchange(REPLICAS_EXCHANGE, ensure=False)
        await exchange.publish(aio_pika.Message(body, content_type="application/json"),
                               routing_key=routing_key, mandatory=False, timeout=PUBLISH_CONFIRM_TIMEOUT)

    async def drain_retired_queues(self, sharded: ShardedQueues, legacy: QueueSpec) -> int:
        """Drain ``legacy`` (the single queue before shards) and the shard queues beyond the
        present count (a deployment that had more) into the shards. Returns how many moved."""
        moved = 0
        # Retired shards first: once unbound, nothing drained from the legacy queue hashes to them.
        for retired in (*sharded.retired_queues(), legacy):
            moved += await self.drain_legacy_queue(retired, sharded)
        return moved

    async def drain_legacy_queue(self, legacy: QueueSpec, sharded: ShardedQueues) -> int:
        """Move what waits in a queue the shards replaced into the shards, then delete it.

        Left alone while it still has consumers (replicas of the earlier version): the last of
        them to go, or the next start, drains it. Returns how many messages were moved.
        """
        assert self._connection is not None, "Bus.connect() was not called"
        channel = await self._connection.channel(publisher_confirms=True)
        try:
            try:
                queue = await channel.declare_queue(legacy.name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return 0  # never there, or drained before
            if queue.declaration_result.consumer_count:
                log.warning("%s still has consumers (earlier replicas): not drained yet", legacy.name)
                return 0
            for key in legacy.bindings:
                await queue.unbind(legacy.exchange, routing_key=key)
            target = await channel.get_exchange(sharded.exchange, ensure=False)
            moved = 0
            await channel.set_qos(prefetch_count=1)
            # Consumed, not fetched: a quorum queue with a single active consumer refuses basic.get.
            with contextlib.suppress(TimeoutError):
                async with queue.iterator(timeout=LEGACY_IDLE_SECONDS) as deliveries:
                    async for delivery in deliveries:
                        await target.publish(self._moved(delivery), routing_key=delivery.routing_key or "",
                                             timeout=PUBLISH_CONFIRM_TIMEOUT)
                        await delivery.ack()
                        moved += 1
            # Unbound before it was drained, so nothing can arrive now; quorum queues take no if-empty.
            left = await channel.declare_queue(legacy.name, passive=True)
            if left.declaration_result.message_count == 0:
                await queue.delete(if_unused=False, if_empty=False)
            log.info("drained %d messages of %s into %s", moved, legacy.name, sharded.exchange)
            return moved
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    @staticmethod
    def _moved(delivery: AbstractIncomingMessage) -> aio_pika.Message:
        """A copy of a legacy queue's delivery with its experiment id in the shards' header."""
        headers = dict(delivery.headers or {})
        if EXPERIMENT_HEADER not in headers:
            with contextlib.suppress(Exception):  # not JSON: the shard it lands in dead-letters it
                headers[EXPERIMENT_HEADER] = str(json.loads(delivery.body)["experiment_id"])[:64]
        headers.setdefault(EXPERIMENT_HEADER, "")
        return aio_pika.Message(delivery.body, content_type=delivery.content_type,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=delivery.message_id, type=delivery.type, headers=headers)

    def on_connection_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the broker connection is lost (before reconnecting)."""
        assert self._connection is not None, "Bus.connect() was not called"
        self._connection.close_callbacks.add(lambda *_: callback())

    async def stop_consuming(self, consumption: Consumption, *, grace: float = 60.0) -> None:
        """Hand a queue back: handle no more of its deliveries, wait (bounded) for those in hand,
        then close its channel, which returns the deliveries not handled to the queue, in order,
        for its next consumer (a single active consumer's successor gets them all)."""
        consumption.stopping = True
        if consumption.in_flight:
            await asyncio.wait(set(consumption.in_flight), timeout=grace)
        with contextlib.suppress(ValueError):
            self._consumers.remove(consumption)
        with contextlib.suppress(Exception):
            await consumption.channel.close()

    async def _handle(self, spec: QueueSpec, handlers: dict[type[Message], Handler],
                      delivery: AbstractIncomingMessage) -> None:
        key = delivery.routing_key or ""
        headers = delivery.headers or {}
        retry_for = headers.get(RETRY_FOR_HEADER)
        if retry_for is not None and _text(retry_for) != spec.name:
            await delivery.ack()  # a retry meant for another queue bound to the same key
            return
        try:
            msg = parse_message(key, delivery.body)
            handler = handlers.get(type(msg))
            if handler is None:
                raise PermanentError(f"{self.service} has no handler for {type(msg).__name__}")
            await handler(msg)
        except PermanentError as exc:
            log.error("dead-lettering %s from %s: %s", key, spec.name, exc)
            await self.dead_letter(key, delivery.body, str(exc), spec.name)
            await delivery.ack()
            return
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await delivery.nack(requeue=True)
            raise
        except Exception as exc:  # every other failure is retried, a bounded number of times
            await self._retry_later(spec, delivery, exc)
            return
        await delivery.ack()

    async def _retry_later(self, spec: QueueSpec, delivery: AbstractIncomingMessage,
                           exc: Exception) -> None:
        """Park a copy of a delivery that failed for now; dead-letter it once it has failed enough."""
        key = delivery.routing_key or ""
        # x-death and friends record each trip through a delay queue: not carried on.
        headers = {k: v for k, v in (delivery.headers or {}).items() if not k.startswith("x-") or
                   k in (RETRY_ATTEMPT_HEADER,)}
        attempt = _int(headers.get(RETRY_ATTEMPT_HEADER)) + 1
        # A dependency that cannot be reached (storage restarting, the broker away) may come back.
        transient = isinstance(exc, (TransientError, ConnectionError, TimeoutError,
                                     aio_pika.exceptions.AMQPConnectionError))
        delay = retry_delay(attempt)
        exhausted = (retry_budget_spent(attempt) > self.transient_retry_seconds if transient
                     else attempt > self.unexpected_retries)
        log.warning("handler for %s failed (attempt %d)%s: %r", key, attempt,
                    "" if exhausted else f", again in {delay:g} s", exc, exc_info=not transient)
        if exhausted:
            reason = f"failed {attempt} times, last: {type(exc).__name__}: {exc}"
            await self.dead_letter(key, delivery.body, reason, spec.name)
            await delivery.ack()
            return
        assert self._delay is not None, "Bus.connect() was not called"
        headers.update({RETRY_FOR_HEADER: spec.name, RETRY_ATTEMPT_HEADER: attempt,
                        DELAY_HEADER: delay_queue_name(delay_bucket_for(delay))})
        try:
            await self._delay.publish(
                aio_pika.Message(delivery.body, content_type=delivery.content_type,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 message_id=delivery.message_id, type=delivery.type, headers=headers),
                routing_key=key, timeout=PUBLISH_CONFIRM_TIMEOUT,
            )
        except Exception:  # the broker is going away: let it redeliver
            with contextlib.suppress(Exception):
                await delivery.nack(requeue=True)
            return
        await delivery.ack()


def retry_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): 0.2, 1, 5, then 30 s each time."""
    return DELAY_BUCKETS[min(attempt, len(DELAY_BUCKETS)) - 1]


def retry_budget_spent(attempt: int) -> float:
    """Seconds waited in all before retry ``attempt``."""
    return sum(retry_delay(a) for a in range(1, attempt + 1))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class KeyedLocks:
    """One FIFO asyncio lock per key with holders or waiters (dropped when nobody needs it);
    ``shared`` makes every key share one lock that is never taken (no ordering beyond the gate)."""

    def __init__(self, *, shared: bool = False) -> None:
        self.shared = shared
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        if self.shared:
            yield
            return
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Consumption:
    """One queue consumed on its own channel: the handlers in flight and the experiments seen."""

    #: Experiment ids remembered per consumption (the oldest are forgotten first).
    SEEN_LIMIT = 10_000

    def __init__(self, spec: QueueSpec, queue: AbstractQueue, channel: AbstractChannel) -> None:
        self.spec = spec
        self.queue = queue
        self.channel = channel
        self.tag = ""
        self.stopping = False
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.experiments: dict[str, None] = {}

    def saw(self, experiment_id: str) -> None:
        """Remember an experiment handled here (a service forgets its cache of it on hand-over)."""
        if not experiment_id:
            return
        self.experiments.pop(experiment_id, None)
        self.experiments[experiment_id] = None
        while len(self.experiments) > self.SEEN_LIMIT:
            del self.experiments[next(iter(self.experiments))]
