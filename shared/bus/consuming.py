"""The bus's consumers: each delivery validated, handed to its type's handler, acked after it.

Ack after the handler returned (its effects are durable); dead-letter what does not parse or
raises :class:`PermanentError`; retry anything else later (:mod:`shared.bus.retries`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from shared.bus.connection import BusConnection
from shared.bus.draining import drain_legacy_queue
from shared.bus.errors import PermanentError
from shared.bus.parsing import parse_message
from shared.bus.retries import RETRY_FOR_HEADER, TRANSIENT_RETRY_SECONDS, UNEXPECTED_RETRIES, retry_later
from shared.messages import Message
from shared.topology import EXPERIMENT_HEADER, QueueSpec, ShardedQueues

__all__ = ["Bus", "Consumption", "Handler", "KeyedLocks", "end_turn"]

log = logging.getLogger(__name__)
# Every delivery handled and how long it took, at DEBUG (TUNEBUS_LOG_LEVEL=DEBUG): a trial's
# path through the services, read from their logs' timestamps.
trace = logging.getLogger("tunebus.trace")

Handler = Callable[[Any], Awaitable[None]]

# The running handler's way to let its experiment's next delivery start (see end_turn).
_turn: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("turn", default=None)


def end_turn() -> None:
    """Let the next delivery of the running handler's experiment start before this one returns.

    For a ``per_experiment`` consumer's handler whose in-order part is done (its change applied
    in memory) and which only waits now (for the write that makes it durable): the delivery is
    still acked only when the handler returns. Does nothing outside such a handler.
    """
    release = _turn.get()
    if release is not None:
        release()


class Bus(BusConnection):
    """One robust connection, one publishing channel (confirms on), one channel per consumer."""

    def __init__(self, url: str, *, service: str, unexpected_retries: int = UNEXPECTED_RETRIES,
                 transient_retry_seconds: float = TRANSIENT_RETRY_SECONDS) -> None:
        super().__init__(url, service=service)
        self.unexpected_retries = unexpected_retries
        self.transient_retry_seconds = transient_retry_seconds
        self._consumers: list[Consumption] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop consuming, wait (bounded) for handlers in flight, close the connection."""
        for consumption in self._consumers:
            with contextlib.suppress(Exception):
                await consumption.queue.cancel(consumption.tag)
        self._consumers.clear()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=grace)
        await super().close(grace=grace)

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
            async with locks.hold(experiment if per_experiment else "") as release_turn, gate:
                if consumption.stopping:
                    return
                task = asyncio.current_task()
                if task is not None:
                    self._in_flight.add(task)
                    consumption.in_flight.add(task)
                consumption.saw(experiment)
                turn = _turn.set(release_turn if per_experiment else None)
                try:
                    await self._handle(spec, handlers, delivery)
                finally:
                    _turn.reset(turn)
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
        started = time.perf_counter()
        try:
            msg = parse_message(key, delivery.body)
            handler = handlers.get(type(msg))
            if handler is None:
                raise PermanentError(f"{self.service} has no handler for {type(msg).__name__}")
            await handler(msg)
            if trace.isEnabledFor(logging.DEBUG):
                trace.debug("handled %s %s in %.1f ms", key, msg.trace_id(),
                            1000 * (time.perf_counter() - started))
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
            await retry_later(self, spec, delivery, exc)
            return
        await delivery.ack()

    async def drain_retired_queues(self, sharded: ShardedQueues, legacy: QueueSpec) -> int:
        """Drain ``legacy`` (the single queue before shards) and the shard queues beyond the
        present count (a deployment that had more) into the shards. Returns how many moved."""
        moved = 0
        # Retired shards first: once unbound, nothing drained from the legacy queue hashes to them.
        for retired in (*sharded.retired_queues(), legacy):
            moved += await self.drain_legacy_queue(retired, sharded)
        return moved

    async def drain_legacy_queue(self, legacy: QueueSpec, sharded: ShardedQueues) -> int:
        """Move what waits in a queue the shards replaced into the shards, then delete it
        (:func:`shared.bus.draining.drain_legacy_queue`). Returns how many messages moved."""
        assert self._connection is not None, "Bus.connect() was not called"
        return await drain_legacy_queue(self._connection, legacy, sharded)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class KeyedLocks:
    """One FIFO asyncio lock per key with holders or waiters (dropped when nobody needs it);
    ``shared`` makes every key share one lock that is never taken (no ordering beyond the gate)."""

    def __init__(self, *, shared: bool = False) -> None:
        self.shared = shared
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Callable[[], None]]:
        """Hold ``key``'s lock for the block; what it yields releases it early (once)."""
        if self.shared:
            yield _nothing
            return
        found, users = self._locks.get(key, (None, 0))
        lock = found or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        held = False

        def release() -> None:
            nonlocal held
            if held:
                held = False
                lock.release()

        try:
            await lock.acquire()
            held = True
            yield release
        finally:
            release()
            users = self._locks[key][1]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _nothing() -> None:
    return None


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
