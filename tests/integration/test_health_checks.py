"""The services' health checks against a real broker and Azurite: they pass while each answers
and fail when it does not (a closed connection, a missing container, nothing listening)."""

from __future__ import annotations

import socket

import pytest

from shared.blob_rest import parse_connection_string
from shared.bus import Bus
from shared.health import failing_checks
from shared.storage import BlobStore, account_connection_string


async def test_bus_check_passes_while_connected_and_fails_once_closed(amqp_vhost):
    bus = Bus(amqp_vhost, service="health-test")
    with pytest.raises(ConnectionError):
        await bus.check()  # never connected
    await bus.connect()
    try:
        await bus.check()
        await bus.check()  # repeatable: each round trip opens and closes its own channel
    finally:
        await bus.close()
    with pytest.raises(ConnectionError):
        await bus.check()


async def test_store_check_passes_for_the_container_and_fails_without_it(infra, fresh_container):
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        await store.check()
    async with BlobStore(infra.storage_connection_string, f"{fresh_container}-missing") as store:
        failed = await failing_checks({"storage": store.check}, timeout=5)
    assert "ContainerNotFound" in failed["storage"]


async def test_store_check_fails_when_nothing_listens(infra):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        fields = parse_connection_string(infra.storage_connection_string)
        conn = account_connection_string(fields["AccountName"], fields["AccountKey"],
                                         f"http://127.0.0.1:{closed_port}/{fields['AccountName']}")
        async with BlobStore(conn, "tunebus") as store:
            failed = await failing_checks({"storage": store.check}, timeout=10)
    assert "ConnectionError" in failed["storage"]
