"""The services' async BlobStore against a real Azurite: documents and ETags, listings, errors,
retries, and interop with the azure-storage-blob SDK (the reference for what Azure accepts).

Azurite checks Shared Key signatures as Azure does, so each passing request is one whose
canonicalization is right, odd blob names included.
"""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from shared import blob_transport, records
from shared.blob_rest import BlobRestError
from shared.storage import BlobStore, ConcurrentWriteError, ContainerNotFoundError
from tests.conftest import AZURITE_KEY, Infra

pytestmark = pytest.mark.integration

ODD_NAMES = ["plain.json", "with space/and+plus.json", "ümlaut/ß.json", "q?hash#percent%.json", "a//b.json"]


async def test_json_documents_round_trip_with_etags(infra: Infra, fresh_container: str) -> None:
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        assert await store.read_json("exp/state.json") is None
        first = await store.write_json("exp/state.json", {"n": 1})
        doc, etag = await store.read_json("exp/state.json") or (None, "")
        assert doc == {"n": 1} and etag == first and etag
        second = await store.write_json("exp/state.json", {"n": 2}, etag=etag)
        assert second != first
        with pytest.raises(ConcurrentWriteError):  # written since `etag` was read
            await store.write_json("exp/state.json", {"n": 3}, etag=etag)
        assert (await store.read_json("exp/state.json") or ({},))[0] == {"n": 2}


async def test_create_only_writes_once(infra: Infra, fresh_container: str) -> None:
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        await store.write_json("exp/claim.json", {"replica": "a"}, create_only=True)
        with pytest.raises(ConcurrentWriteError):
            await store.write_json("exp/claim.json", {"replica": "b"}, create_only=True)
        assert (await store.read_json("exp/claim.json") or ({},))[0] == {"replica": "a"}


async def test_listing_follows_every_page_and_delete_prefix_empties_it(infra: Infra,
                                                                       fresh_container: str) -> None:
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        names = [f"exp/trials/t{i:02d}/metrics/{j:06d}.json" for i in range(5) for j in range(3)]
        for name in names:
            await store.write_bytes(name, b"{}")
        await store.write_bytes("other/x.json", b"{}")
        assert await store.list("exp/", page_size=4) == sorted(names)
        assert await store.list("exp/trials/t03/") == [n for n in names if "/t03/" in n]
        await store.delete_prefix("exp/")
        assert await store.list("exp/") == []
        assert await store.list("") == ["other/x.json"]


async def test_odd_names_interoperate_with_the_sdk(infra: Infra, fresh_container: str) -> None:
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        for name in ODD_NAMES:
            await store.write_json(f"ours/{name}", {"name": name})
        await store.write_bytes("ours/stdout.log", b"hello\n", content_type="text/plain")
        with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
            container = service.get_container_client(fresh_container)
            for name in ODD_NAMES:
                assert json.loads(container.download_blob(f"ours/{name}").readall()) == {"name": name}
                container.upload_blob(f"sdk/{name}", json.dumps({"sdk": name}).encode())
            log = container.get_blob_client("ours/stdout.log").get_blob_properties()
            assert log.content_settings.content_type == "text/plain"
            state = container.get_blob_client(f"ours/{ODD_NAMES[0]}").get_blob_properties()
            assert state.content_settings.content_type == "application/json"
        for name in ODD_NAMES:
            found = await store.read_json(f"sdk/{name}")
            assert found is not None and found[0] == {"sdk": name}
        assert await store.list("sdk/") == sorted(f"sdk/{n}" for n in ODD_NAMES)


async def test_missing_container_is_named(infra: Infra) -> None:
    async with BlobStore(infra.storage_connection_string, "no-such-container-here") as store:
        with pytest.raises(ContainerNotFoundError, match="no-such-container-here"):
            await store.list("x/")
        assert await store.read_bytes("x/y.json") is None


async def test_a_wrong_key_fails_naming_the_blob_and_status_not_the_key(infra: Infra,
                                                                         fresh_container: str) -> None:
    wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    conn = infra.storage_connection_string.replace(AZURITE_KEY, wrong_key)
    async with BlobStore(conn, fresh_container) as store:
        with pytest.raises(BlobRestError) as caught:
            await store.write_json("exp/state.json", {"n": 1})
    error = caught.value
    assert error.status == 403 and error.blob == "exp/state.json"
    assert "Put Blob" in str(error) and "exp/state.json" in str(error)
    assert wrong_key not in str(error) and AZURITE_KEY not in str(error)


async def test_an_unreachable_service_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blob_transport, "RETRY_DELAYS", (0.0, 0.0))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    async with BlobStore(conn, "c") as store:
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            await store.read_json("x.json")


async def test_the_results_sas_appends_but_cannot_read_list_or_overwrite(infra: Infra,
                                                                          fresh_container: str) -> None:
    import aiohttp

    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        assert await store.create_append_blob("m/results.jsonl") is True
        assert await store.create_append_blob("m/results.jsonl") is False  # kept as it is
        url = store.results_sas_url("m/results.jsonl", timedelta(minutes=5))
        base, _, sas = url.partition("?")
        assert base == f"{store.container_url}/m/results.jsonl"
        async with aiohttp.ClientSession() as http:
            append = await http.put(f"{base}?{sas}&comp=appendblock", data=b'{"v":1}\n')
            assert append.status == 201
            put = await http.put(f"{base}?{sas}", data=b"x", headers={"x-ms-blob-type": "BlockBlob"})
            assert put.status == 403
            get = await http.get(f"{base}?{sas}")
            assert get.status == 403
            listing = await http.get(f"{store.container_url}?restype=container&comp=list&{sas}")
            assert listing.status == 403
        assert await store.read_range("m/results.jsonl", 0, 100) == (b'{"v":1}\n', 8)
        assert await store.read_range("m/results.jsonl", 5, 2) == (b"1}", 8)
        assert await store.read_range("m/results.jsonl", 8, 100) == (b"", 8)
        assert await store.read_range("m/nothing", 0, 100) is None


class _ResponseDroppingProxy:
    """A TCP proxy to the blob service that forwards every request but, for the first one that
    carries ``trigger``, closes the client's connection instead of passing the response on: the
    write happened, its answer was lost (as when a connection breaks at the wrong moment)."""

    def __init__(self, upstream_port: int, trigger: bytes) -> None:
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.dropped = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            while True:
                head = await client_r.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await client_r.readexactly(length)
                up_w.write(head + body)
                await up_w.drain()
                reply_head = await up_r.readuntil(b"\r\n\r\n")
                if b"transfer-encoding: chunked" in reply_head.lower():
                    reply_body = await up_r.readuntil(b"\r\n0\r\n\r\n")
                else:
                    reply_length = next((int(line.split(b":", 1)[1]) for line in reply_head.split(b"\r\n")
                                         if line.lower().startswith(b"content-length:")), 0)
                    reply_body = await up_r.readexactly(reply_length)
                if self.trigger in head.lower() and not self.dropped:
                    self.dropped += 1
                    return  # the write is done upstream; the client never hears of it
                client_w.write(reply_head + reply_body)
                await client_w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            client_w.close()
            up_w.close()


@pytest.mark.parametrize("create_only", [False, True], ids=["etag", "create_only"])
async def test_a_conditional_write_whose_answer_was_lost_is_not_taken_for_a_conflict(
        infra: Infra, fresh_container: str, create_only: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blob_transport, "RETRY_DELAYS", (0.0, 0.0))
    blob_port = int(infra.storage_connection_string.split("BlobEndpoint=http://127.0.0.1:")[1].split("/")[0])
    async with BlobStore(infra.storage_connection_string, fresh_container) as direct:
        etag = None if create_only else await direct.write_json("exp/state.json", {"n": 1})
        proxy = _ResponseDroppingProxy(blob_port, trigger=b"if-none-match" if create_only else b"if-match:")
        port = await proxy.start()
        conn = infra.storage_connection_string.replace(f"127.0.0.1:{blob_port}", f"127.0.0.1:{port}")
        async with BlobStore(conn, fresh_container) as store:
            new_etag = await store.write_json("exp/state.json", {"n": 2}, etag=etag, create_only=create_only)
        assert proxy.dropped == 1  # the first answer was lost; the retry met the changed blob
        found = await direct.read_json("exp/state.json")
        assert found == ({"n": 2}, new_etag)
        with pytest.raises(ConcurrentWriteError):  # a real conflict is still one
            await direct.write_json("exp/state.json", {"n": 3}, etag=etag, create_only=create_only)
        assert proxy.server is not None
        proxy.server.close()


async def test_a_file_is_uploaded_in_blocks_keeping_its_tail(infra: Infra, fresh_container: str,
                                                            tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_bytes(b"".join(b"line %06d\n" % i for i in range(3000)))  # 36,000 bytes
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        skipped = await store.upload_file_tail("whole.log", log, max_bytes=1 << 20, block_bytes=5000)
        assert skipped == 0 and await store.read_bytes("whole.log") == log.read_bytes()
        skipped = await store.upload_file_tail("tail.log", log, max_bytes=1100, block_bytes=512)
        body = await store.read_bytes("tail.log") or b""
        empty = tmp_path / "empty.log"
        empty.write_bytes(b"")
        await store.upload_file_tail("empty.log", empty, max_bytes=100)
        assert await store.read_bytes("empty.log") == b""
    assert skipped == 36000 - 1100
    note, rest = body.split(b"\n", 1)
    assert note == b"[tunebus: the first 34900 bytes of this log were left out]"
    assert rest == log.read_bytes()[-1100:] and rest.endswith(b"line 002999\n")


async def test_append_blocks_land_whole_and_in_order(infra: Infra, fresh_container: str) -> None:
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        path = "exp/trials-ended/000000.jsonl"
        assert await store.create_append_blob(path) is True
        assert await store.create_append_blob(path) is False  # a repeat keeps what is there
        await store.append_block(path, b'{"a": 1}\n')
        await store.append_block(path, b'{"b": 2}\n{"c": 3}\n')
        assert await store.read_bytes(path) == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'
        with pytest.raises(ValueError, match="some bytes"):
            await store.append_block(path, b"")


async def test_experiment_document_is_required_read_and_checked(infra: Infra, fresh_container: str) -> None:
    # Every service reads experiment.json this way: missing and malformed both name the experiment
    # (its handlers dead-letter the message with that reason), a good one is typed.
    async with BlobStore(infra.storage_connection_string, fresh_container) as store:
        missing = r"unknown experiment 'e1': no experiments/e1/experiment\.json"
        with pytest.raises(records.BadExperimentDocument, match=missing):
            await records.require_experiment_doc(store, "e1")
        await store.write_json("experiments/e1/experiment.json", {"config": "not an object"})
        with pytest.raises(records.BadExperimentDocument, match=r"experiment\.json of e1"):
            await records.require_experiment_doc(store, "e1")
        await records.write_experiment_doc(store, records.ExperimentDocument(
            experiment_id="e1", config={"trialConcurrency": 2}, code_blob="experiments/e1/code.tar.gz"))
        doc = await records.require_experiment_doc(store, "e1")
        assert doc.config == {"trialConcurrency": 2} and doc.code_blob == "experiments/e1/code.tar.gz"
