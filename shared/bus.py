"""A small bus helper on aio-pika: connect, declare, publish with confirms, consume validated.

Handlers are plain ``async def handle(msg: SomeMessage) -> None`` functions. The bus parses
and validates each delivery into its message class (by routing key), calls the handler, and
acks only after the handler returned — that is, after its effects are durable. A delivery
that does not parse, or whose handler raises :class:`PermanentError`, is copied to the
dead-letter exchange with the reason in its headers and acked; the service keeps running.
That copy has every secret in its JSON body masked (:func:`shared.config.redact_secrets`: a
start message may carry a storage account key); one that RabbitMQ dead-letters itself (the
delivery limit) keeps its body as it was, so publishers should not put keys in messages.
Any other exception is treated as transient: the delivery is requeued after a back-off, and
the quorum queue's delivery limit dead-letters it if it never succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
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

from shared.config import redact_secrets
from shared.messages import Message, Ticket, message_types
from shared.topology import (
    DEAD_LETTER_EXCHANGE,
    DELAY_EXCHANGE,
    DELAY_HEADER,
    EVENTS_EXCHANGE,
    EXCHANGES,
    QUEUES,
    QueueSpec,
    delay_bucket_for,
    delay_queue_name,
)

__all__ = ["Bus", "Handler", "PermanentError", "TransientError", "parse_message"]

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[None]]

REASON_HEADER = "x-tunebus-reason"
PUBLISH_CONFIRM_TIMEOUT = 10.0
PUBLISH_ATTEMPTS = 3


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
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentError(f"body is not JSON: {exc}") from exc
    try:
        msg = cls.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise PermanentError(f"invalid {cls.__name__}: {details}") from exc
    if isinstance(msg, Ticket) and msg.routing_key != routing_key:
        raise PermanentError(f"ticket purpose {msg.purpose!r} does not match routing key {routing_key!r}")
    return msg


def _routing_key(msg: Message) -> str:
    return msg.routing_key if isinstance(msg, Ticket) else msg.ROUTING_KEY


def _without_secrets(body: bytes) -> bytes:
    """A JSON body with every secret masked; the body as is when it has none (or is not JSON)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body
    clean = redact_secrets(doc)
    return body if clean == doc else json.dumps(clean).encode()


class Bus:
    """One robust connection, one publishing channel (confirms on), one channel per consumer."""

    def __init__(self, url: str, *, service: str) -> None:
        self.url = url
        self.service = service
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._events: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._delay: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
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
            exchanges[ex.name] = await channel.declare_exchange(ex.name, ex.type, durable=True)
        self._events = exchanges[EVENTS_EXCHANGE]
        self._dlx = exchanges[DEAD_LETTER_EXCHANGE]
        self._delay = exchanges[DELAY_EXCHANGE]
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
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
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
                await self._events.publish(self._amqp_message(msg, headers), routing_key=_routing_key(msg),
                                           mandatory=True, timeout=PUBLISH_CONFIRM_TIMEOUT)
                return
            except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    raise TransientError(f"publishing {_routing_key(msg)} failed: {exc!r}") from exc
                log.warning("publishing %s failed (attempt %d): %r; again", _routing_key(msg), attempt, exc)
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
                headers={REASON_HEADER: reason[:4000], "x-tunebus-queue": queue,
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
            headers=headers or {},
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
    ) -> None:
        """Consume ``spec`` on its own channel and route each message to its type's handler.

        ``concurrency`` 1 handles deliveries strictly in order (dispatcher, tuner); more lets
        up to that many handlers run at once (submitters, ingestors).
        """
        assert self._connection is not None, "Bus.connect() was not called"
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=max(prefetch, concurrency))
        queue = await self._declare_queue(channel, spec)
        # aio-pika runs each delivery's callback as its own task, in delivery order; the
        # semaphore's FIFO waiters keep that order, and with concurrency 1 make it strict.
        gate = asyncio.Semaphore(concurrency)

        async def on_message(delivery: AbstractIncomingMessage) -> None:
            async with gate:
                task = asyncio.current_task()
                if task is not None:
                    self._in_flight.add(task)
                try:
                    await self._handle(spec, handlers, delivery)
                finally:
                    if task is not None:
                        self._in_flight.discard(task)

        tag = await queue.consume(on_message)
        self._consumers.append((queue, tag))

    async def _handle(self, spec: QueueSpec, handlers: dict[type[Message], Handler],
                      delivery: AbstractIncomingMessage) -> None:
        key = delivery.routing_key or ""
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
        except Exception as exc:
            raw_count = (delivery.headers or {}).get("x-delivery-count", 0)
            count = raw_count if isinstance(raw_count, int) else 0
            log.warning("handler for %s failed (attempt %d), will retry: %r", key, count + 1, exc,
                        exc_info=not isinstance(exc, TransientError))
            await asyncio.sleep(min(0.2 * 2 ** count, 5.0))
            await delivery.nack(requeue=True)
            return
        await delivery.ack()
