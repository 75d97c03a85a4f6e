"""The one service runner's connections (shared/service.py): what every service's start() opens,
checks and closes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared.service import open_connections
from shared.settings import CommonSettings
from tests.conftest import Infra

pytestmark = pytest.mark.integration


@pytest.fixture
def missing_container(infra: Infra) -> Iterator[str]:
    """A container name nobody made yet; deleted afterwards if the test made it."""
    from azure.storage.blob import BlobServiceClient

    name = f"t-{uuid.uuid4().hex[:20]}"
    yield name
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        try:
            service.delete_container(name)
        except Exception:  # never made: nothing to clean up
            pass


async def test_connections_make_the_container_pass_their_checks_and_close_the_bus_first(
        infra: Infra, amqp_vhost: str, missing_container: str) -> None:
    settings = CommonSettings(amqp_url=amqp_vhost, storage_connection_string=infra.storage_connection_string,
                              storage_container=missing_container)
    connections = await open_connections(settings, service="test")
    checks = connections.checks()
    assert set(checks) == {"broker", "storage"}
    for check in checks.values():
        await check()  # the container exists now: its check would fail otherwise
    seen: list[str] = []

    class StillWrites:
        async def close(self) -> None:
            with pytest.raises(ConnectionError):
                await connections.bus.check()
            seen.append("bus closed")
            await connections.store.check()  # storage is still there for what closes now
            seen.append("storage open")

    await connections.close(StillWrites())
    assert seen == ["bus closed", "storage open"]
    running = connections.running(connections.close)
    assert set(running.checks) == {"broker", "storage"}
