"""The broker from the CLI: connecting, and watching an experiment's events."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .common import _CONNECT_TIMEOUT, _REFRESH_SECONDS, CliError, _masked_url

if TYPE_CHECKING:
    from shared.bus import Bus
    from shared.settings import CommonSettings


async def _connect_bus(settings: CommonSettings) -> Bus:
    import asyncio

    from shared.bus import Bus

    bus = Bus(settings.amqp_url, service="cli")
    try:
        await asyncio.wait_for(bus.connect(attempts=1), _CONNECT_TIMEOUT)
    except Exception as exc:
        raise CliError(f"cannot reach the broker at {_masked_url(settings.amqp_url)}: "
                       f"{_exception_line(exc)}") from None
    return bus


def _exception_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _EventWatcher:
    """An exclusive, auto-deleted, server-named queue of one experiment's status and trial-end events.

    Events only say "something changed": the state document is what gets read and shown.
    """

    ROUTING_KEYS = ("experiment.status", "trial.ended")

    def __init__(self, experiment_id: str) -> None:
        import asyncio

        self.experiment_id = experiment_id
        self.changed = asyncio.Event()  # any event of the experiment
        self.status_changed = asyncio.Event()  # its experiment.status: read at once
        self._connection: Any = None

    async def start(self, url: str) -> None:
        import asyncio

        import aio_pika

        from shared.topology import EVENTS_EXCHANGE

        try:
            self._connection = await asyncio.wait_for(
                aio_pika.connect_robust(url, client_properties={"connection_name": "cli-watch"}),
                _CONNECT_TIMEOUT,
            )
        except Exception as exc:
            raise CliError(f"cannot reach the broker at {_masked_url(url)}: {_exception_line(exc)}") from None
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in self.ROUTING_KEYS:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._on_event, no_ack=True)

    async def _on_event(self, delivery: Any) -> None:
        try:
            experiment_id = json.loads(delivery.body).get("experiment_id")
        except (ValueError, AttributeError):
            return
        if experiment_id == self.experiment_id:
            self.changed.set()
            if delivery.routing_key == "experiment.status":
                self.status_changed.set()

    def clear(self) -> None:
        self.changed.clear()
        self.status_changed.clear()

    async def wait(self, timeout: float, last_read: float) -> None:
        """Until an event for the experiment arrives, or ``timeout`` seconds; then, unless the
        experiment's status changed, until ``_REFRESH_SECONDS`` after ``last_read``: trial ends
        only move the progress line, and re-reading the state document for each of them costs
        the storage a request per trial."""
        import asyncio

        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
            left = _REFRESH_SECONDS - (time.monotonic() - last_read)
            if left > 0 and not self.status_changed.is_set():
                await asyncio.wait_for(self.status_changed.wait(), left)
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
