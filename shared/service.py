"""Running a service process: its broker and storage connections, logging, signals, health file,
graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from shared.bus import Bus
from shared.health import HealthCheck, keep_touching
from shared.secrets_mask import install_log_masking
from shared.settings import CommonSettings, SettingsMissing, load_service_settings
from shared.storage import BlobStore

S = TypeVar("S", bound=CommonSettings)

__all__ = ["Closable", "Connections", "Running", "open_connections", "run_service", "service_main",
           "setup_logging"]


@dataclass(frozen=True)
class Running:
    """What a service's ``start()`` returns: how to stop it, and what its health depends on."""

    shutdown: Callable[[], Awaitable[None]]
    checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    """Named dependency checks (broker, storage) that must pass for the health file to be touched."""


class Closable(Protocol):
    """What a service closes with its connections (a backend, a cache of stores)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Connections:
    """A service's broker and storage connections (:func:`open_connections`)."""

    bus: Bus
    store: BlobStore

    def checks(self) -> dict[str, HealthCheck]:
        """The health checks every service's health file depends on."""
        return {"broker": self.bus.check, "storage": self.store.check}

    def running(self, shutdown: Callable[[], Awaitable[None]]) -> Running:
        """What ``start()`` returns: ``shutdown``, and health as good as these connections."""
        return Running(shutdown, self.checks())

    async def close(self, *before_storage: Closable) -> None:
        """Close the bus (nothing more is consumed or published), then ``before_storage`` in
        order (what may still write to storage while it closes), then the store."""
        await self.bus.close()
        for part in before_storage:
            await part.close()
        await self.store.close()


async def open_connections(settings: CommonSettings, *, service: str) -> Connections:
    """Open the deployment's storage (its container made if missing), then connect to the
    broker as ``service``'s user."""
    store = BlobStore(settings.storage_connection_string, settings.storage_container)
    await store.ensure_container()
    bus = Bus(settings.amqp_url, service=service)
    await bus.connect()
    return Connections(bus, store)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Log lines quote URLs, connection strings and errors: no secret shape reaches the log.
    install_log_masking()
    # The Azure SDK logs every HTTP request at INFO.
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


async def _serve(start: Callable[[], Awaitable[Running]], settings: CommonSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start()
    health = (asyncio.create_task(keep_touching(settings.health_file, checks=running.checks))
              if settings.health_file else None)
    try:
        await stop.wait()
    finally:
        logging.getLogger(__name__).info("shutting down")
        if health is not None:
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
        await running.shutdown()


def service_main(name: str, settings_class: type[S], start: Callable[[S], Awaitable[Running]]) -> None:
    """A service's ``__main__``: its settings (exit 2 naming what is missing or wrong), then run."""
    try:
        settings = load_service_settings(settings_class)
    except SettingsMissing as exc:
        print(f"tunebus {name}: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    run_service(lambda: start(settings), settings)


def run_service(start: Callable[[], Awaitable[Running]], settings: CommonSettings) -> None:
    """Run ``start()`` (which connects and starts consuming) until SIGTERM/SIGINT, touching the
    health file meanwhile while its checks pass; then the shutdown it returned."""
    setup_logging(settings.log_level)
    asyncio.run(_serve(start, settings))
