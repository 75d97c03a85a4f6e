"""The bus's connection: connect, declare the topology, publish with confirms, dead-letter."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from shared.bus.errors import TransientError
from shared.messages import Message, Ticket
from shared.secrets_mask import mask_secrets, redact_secrets
from shared.topology import (
    DEAD_LETTER_EXCHANGE,
    DELAY_EXCHANGE,
    DELAY_HEADER,
    EVENTS_EXCHANGE,
    EXCHANGES,
    EXPERIMENT_HEADER,
    QUEUES,
    REPLICAS_EXCHANGE,
    SHARDED,
    TICKET_LATENESS,
    QueueSpec,
    delay_bucket_for,
    delay_queue_name,
)

__all__ = ["PUBLISH_CONFIRM_TIMEOUT", "REASON_HEADER", "BusConnection", "without_secrets"]

log = logging.getLogger(__name__)
trace = logging.getLogger("tunebus.trace")  # each publish and its confirm's wait, at DEBUG

REASON_HEADER = "x-tunebus-reason"
PUBLISH_CONFIRM_TIMEOUT = 10.0
PUBLISH_ATTEMPTS = 3


def without_secrets(body: bytes) -> bytes:
    """The body with every secret masked: as JSON if it parses, else as text; as is when it has
    none (or is not text at all).

    What a dead-lettered copy carries (a start message may hold a storage account key). One that
    RabbitMQ dead-letters itself (the delivery limit) keeps its body as it was, so publishers
    should not put keys in messages.
    """
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


class BusConnection:
    """One robust connection and one publishing channel (confirms on): the bus without its
    consumers (:class:`shared.bus.Bus` adds them)."""

    def __init__(self, url: str, *, service: str) -> None:
        self.url = url
        self.service = service
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._events: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._delay: AbstractExchange | None = None

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
        """Declare ``spec`` on ``channel`` and bind it to its keys (idempotent)."""
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
        """Close the connection (:class:`shared.bus.Bus` first stops its consumers, waiting up
        to ``grace`` seconds for their handlers)."""
        if self._connection is not None:
            await self._connection.close()

    def on_connection_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the broker connection is lost (before reconnecting)."""
        assert self._connection is not None, "Bus.connect() was not called"
        self._connection.close_callbacks.add(lambda *_: callback())

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

    def delay_exchange(self) -> AbstractExchange:
        """The exchange of the delay queues (tickets and retries wait there)."""
        assert self._delay is not None, "Bus.connect() was not called"
        return self._delay

    def _require_channel(self) -> AbstractChannel:
        if self._channel is None:
            raise RuntimeError("Bus.connect() was not called")
        return self._channel

    # ------------------------------------------------------------------ publishing

    async def publish(self, msg: Message, *, headers: dict[str, Any] | None = None) -> None:
        """Publish a message on the events exchange; returns once the broker confirmed it.

        A ticket not yet due is parked in a delay queue instead (:meth:`publish_ticket`): its
        consumer sees it once, when it is due. A confirm that does not come (the connection
        broke and is being re-established) is waited for a bounded time, then the message is
        sent again: consumers dedupe by id.
        """
        assert self._events is not None, "Bus.connect() was not called"
        exchange, mandatory = self._events, True
        if isinstance(msg, Ticket):
            left = (msg.due - datetime.now(UTC)).total_seconds()
            if left > 0:
                bucket = delay_queue_name(delay_bucket_for(left, lateness=TICKET_LATENESS))
                exchange, mandatory, headers = self.delay_exchange(), False, {**(headers or {}),
                                                                             DELAY_HEADER: bucket}
        first: Exception | None = None
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                await exchange.publish(self._amqp_message(msg, headers), routing_key=msg.routing_key,
                                       mandatory=mandatory, timeout=PUBLISH_CONFIRM_TIMEOUT)
                if trace.isEnabledFor(logging.DEBUG):
                    trace.debug("published %s %s%s, confirmed in %.1f ms", msg.routing_key, msg.trace_id(),
                                "" if mandatory else " (delayed)", 1000 * (time.perf_counter() - started))
                return
            # A channel the broker closed (e.g. after a refused publish) reads as closed until the
            # robust connection has reopened it: aiormq's ChannelInvalidStateError, no AMQPError.
            except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError,
                    aiormq.exceptions.ChannelInvalidStateError) as exc:
                first = first or exc
                if attempt == PUBLISH_ATTEMPTS:
                    last = "" if exc is first else f" (last: {exc!r})"
                    raise TransientError(f"publishing {msg.routing_key} failed: {first!r}{last}") from exc
                log.warning("publishing %s failed (attempt %d): %r; again", msg.routing_key, attempt, exc)
                await asyncio.sleep(0.5 * attempt)

    async def publish_many(self, msgs: Iterable[Message]) -> None:
        """Publish several messages in order, each confirmed before the next (order matters)."""
        for msg in msgs:
            await self.publish(msg)

    async def publish_ticket(self, ticket: Ticket) -> None:
        """Publish a ticket now if it is due, else park it in a delay queue until about ``due``
        (at most ``TICKET_LATENESS`` of the wait late: fewer hops through the delay queues)."""
        await self.publish(ticket)

    async def dead_letter(self, routing_key: str, body: bytes, reason: str, queue: str) -> None:
        """Copy a delivery to the dead-letter exchange with why and where it failed, secrets masked."""
        assert self._dlx is not None, "Bus.connect() was not called"
        await self._dlx.publish(
            aio_pika.Message(
                without_secrets(body),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                headers={REASON_HEADER: mask_secrets(reason)[:4000], "x-tunebus-queue": queue,
                         "x-tunebus-service": self.service},
            ),
            routing_key=routing_key or "unrouted",
        )

    async def announce(self, routing_key: str, body: bytes) -> None:
        """Publish a transient note on the replicas exchange (replicas of a sharded service)."""
        channel = self._require_channel()
        exchange = await channel.get_exchange(REPLICAS_EXCHANGE, ensure=False)
        await exchange.publish(aio_pika.Message(body, content_type="application/json"),
                               routing_key=routing_key, mandatory=False, timeout=PUBLISH_CONFIRM_TIMEOUT)

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
