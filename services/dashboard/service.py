"""The dashboard service: NNI's web portal for tunebus, served by aiohttp.

Reads come from blob storage, the system of record (:mod:`.reader`); a page polls with
``If-None-Match`` and costs a 304 while nothing changed, nothing while nobody watches. The
buttons publish the CLI's command messages (``experiment.stop`` / ``resume`` / ``update``,
``trial.stop_request``) with the service's own broker account. It consumes no queue.
"""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from shared.messages import Message
from shared.service import Running, open_connections

from .access import Access, new_token
from .app import Dashboard, build_app
from .reader import ExperimentReader
from .settings import DashboardSettings, is_loopback

__all__ = ["start"]

log = logging.getLogger("tunebus.dashboard")


async def start(settings: DashboardSettings) -> Running:
    """Connect to the broker and storage, then listen; returns its shutdown and health checks."""
    connections = await open_connections(settings, service="dashboard")

    async def publish(msg: Message) -> None:
        await connections.bus.publish(msg)

    reader = ExperimentReader(connections.store, refresh_seconds=settings.dashboard_refresh_seconds,
                              capacity=settings.dashboard_cached_experiments,
                              endpoint_template=settings.shared_storage_endpoint)
    loopback = is_loopback(settings.dashboard_host)
    given = settings.dashboard_token
    token = new_token() if given is None else given.get_secret_value()
    access = Access(token, loopback_only=loopback)
    runner = web.AppRunner(build_app(Dashboard(settings, reader, access, publish)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.dashboard_host, settings.dashboard_port)
    await site.start()
    port = runner.addresses[0][1]
    host = settings.dashboard_host if ":" not in settings.dashboard_host else f"[{settings.dashboard_host}]"
    url = f"http://{host}:{port}/"
    if given is None:
        # print, not log: the one place it is shown (log masking need not know its shape).
        print(f"dashboard token (shown once): open {url}?token={token}", file=sys.stdout, flush=True)
    log.info("dashboard at %s (%s)", url,
             "this machine only" if loopback else "token required for every request")

    async def shutdown() -> None:
        await runner.cleanup()
        await reader.close()
        await connections.close()

    return connections.running(shutdown)
