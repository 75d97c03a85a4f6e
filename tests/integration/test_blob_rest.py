"""The stdlib blob client against a real Azurite: signatures, paging, errors, and interop with the SDK.

Azurite checks Shared Key signatures as Azure does, so every passing request here is one the
canonicalization got right (including path-style URLs, where the account name is signed twice).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from shared.blob_rest import BlobRestClient, BlobRestError
from tests.conftest import AZURITE_KEY, Infra

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TUNEBUS = Path(sys.executable).parent / "tunebus"
# Names that need percent-encoding in the URL (and so in the signed path).
ODD_NAMES = ["plain.json", "with space/and+plus.json", "ümlaut/ß.json", "q?hash#percent%.json", "a//b.json"]


@pytest.fixture
def client(infra: Infra, fresh_container: str) -> Iterator[BlobRestClient]:
    with BlobRestClient.from_connection_string(infra.storage_connection_string, fresh_container) as rest:
        yield rest


def _counting_requests(client: BlobRestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []
    exchange = client._exchange

    def spy(method: str, url: str, headers: dict[str, str], body: bytes) -> object:
        sent.append(url)
        return exchange(method, url, headers, body)

    monkeypatch.setattr(client, "_exchange", spy)
    return sent


def test_put_get_exists_round_trip(client: BlobRestClient) -> None:
    client.put_blob("experiments/x/state.json", b'{"status": "RUNNING"}', content_type="application/json")
    assert client.get_blob("experiments/x/state.json") == b'{"status": "RUNNING"}'
    assert client.get_json("experiments/x/state.json") == {"status": "RUNNING"}
    assert client.exists("experiments/x/state.json")
    client.put_blob("experiments/x/state.json", b"{}")  # overwrite
    assert client.get_json("experiments/x/state.json") == {}


def test_create_only_put_does_not_overwrite(client: BlobRestClient) -> None:
    client.put_blob("experiments/x/secrets.json", b'{"a": 1}', create_only=True)
    with pytest.raises(BlobRestError) as caught:
        client.put_blob("experiments/x/secrets.json", b'{"a": 2}', create_only=True)
    assert (caught.value.status, caught.value.code) == (409, "BlobAlreadyExists")
    assert client.get_json("experiments/x/secrets.json") == {"a": 1}


def test_missing_blob_is_none_and_does_not_exist(client: BlobRestClient) -> None:
    assert client.get_blob("nothing/here.json") is None
    assert client.get_json("nothing/here.json") is None
    assert not client.exists("nothing/here.json")


def test_listing_follows_next_marker_across_small_pages(client: BlobRestClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"experiments/e{i:02d}/state.json" for i in range(7)] + ["experiments/e00/trials/t/trial.json"]
    for name in names:
        client.put_blob(name, b"{}")
    client.put_blob("other/file", b"")
    sent = _counting_requests(client, monkeypatch)
    assert client.list_names("experiments/", page_size=3) == sorted(names)
    assert len(sent) == 3 and all("maxresults=3" in url for url in sent)
    assert "marker=" in sent[1] and "marker=" in sent[2]
    assert client.list_names("experiments/e0", limit=2, page_size=2) == sorted(names)[:2]


def test_listing_with_a_delimiter_is_one_level_deep(client: BlobRestClient) -> None:
    for name in ["experiments/a/state.json", "experiments/a/trials/t/trial.json", "experiments/b/code.tar.gz",
                 "experiments/top.json"]:
        client.put_blob(name, b"{}")
    assert client.list_names("experiments/", "/", page_size=1) == [
        "experiments/a/", "experiments/b/", "experiments/top.json"]
    assert client.list_names("experiments/a/", "/") == ["experiments/a/state.json", "experiments/a/trials/"]
    assert client.list_names("nothing/", "/") == []


def test_ensure_container_is_idempotent(infra: Infra) -> None:
    name = f"t-{uuid.uuid4().hex[:20]}"
    rest = BlobRestClient.from_connection_string(infra.storage_connection_string, name)
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        try:
            assert rest.get_blob("a") is None  # no container yet: still just "not there"
            with pytest.raises(BlobRestError) as missing:
                rest.list_names("")
            assert (missing.value.status, missing.value.code) == (404, "ContainerNotFound")
            rest.ensure_container()
            rest.ensure_container()
            assert service.get_container_client(name).exists()
            rest.put_blob("a", b"1")
            assert rest.get_blob("a") == b"1"
        finally:
            rest.close()
            service.delete_container(name)


def test_wrong_key_is_a_403_naming_the_operation_and_blob_but_not_the_key(infra: Infra,
                                                                          fresh_container: str) -> None:
    wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    conn = infra.storage_connection_string.replace(AZURITE_KEY, wrong_key)
    assert conn != infra.storage_connection_string
    with BlobRestClient.from_connection_string(conn, fresh_container) as rest:
        for operation, call in [("Put Blob", lambda: rest.put_blob("x/code.tar.gz", b"1")),
                                ("Get Blob", lambda: rest.get_blob("x/code.tar.gz")),
                                ("List Blobs", lambda: rest.list_names("x/"))]:
            with pytest.raises(BlobRestError) as caught:
                call()
            error = caught.value
            assert error.status == 403 and error.operation == operation
            assert str(error).startswith(f"{operation} ") and fresh_container in str(error)
            assert wrong_key not in str(error) and AZURITE_KEY not in str(error)
        assert "'x/code.tar.gz'" in str(BlobRestError("Get Blob", "'x/code.tar.gz' in container 'c'", 403,
                                                      None, "-"))


def test_blobs_written_by_the_sdk_read_back_through_rest(infra: Infra, fresh_container: str,
                                                         client: BlobRestClient) -> None:
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        container = service.get_container_client(fresh_container)
        for name in ODD_NAMES:
            container.upload_blob(f"sdk/{name}", json.dumps({"name": name}).encode())
        container.upload_blob("sdk/code.tar.gz", bytes(range(256)) * 4000)
    for name in ODD_NAMES:
        assert client.get_json(f"sdk/{name}") == {"name": name}
        assert client.exists(f"sdk/{name}")
    assert client.get_blob("sdk/code.tar.gz") == bytes(range(256)) * 4000
    assert client.list_names("sdk/") == sorted(f"sdk/{n}" for n in [*ODD_NAMES, "code.tar.gz"])


def test_blobs_written_through_rest_read_back_with_the_sdk(infra: Infra, fresh_container: str,
                                                           client: BlobRestClient) -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB in one Put Blob
    client.put_blob("rest/code.tar.gz", payload, content_type="application/gzip")
    for name in ODD_NAMES:
        client.put_blob(f"rest/{name}", json.dumps({"name": name}).encode())
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        container = service.get_container_client(fresh_container)
        assert container.download_blob("rest/code.tar.gz").readall() == payload
        properties = container.get_blob_client("rest/code.tar.gz").get_blob_properties()
        assert properties.content_settings.content_type == "application/gzip"
        for name in ODD_NAMES:
            assert json.loads(container.download_blob(f"rest/{name}").readall()) == {"name": name}
        listed = sorted(b.name for b in container.list_blobs(name_starts_with="rest/"))
    assert listed == sorted(f"rest/{n}" for n in [*ODD_NAMES, "code.tar.gz"])


def test_a_dropped_keep_alive_connection_is_replaced(client: BlobRestClient) -> None:
    client.connect()
    client.put_blob("k", b"1")
    assert len(client._idle) == 1  # the connection opened ahead was the one used
    sock = client._idle[0].sock
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)  # as when the server closes an idle connection
    assert client.get_blob("k") == b"1"
    assert client._idle[0].sock is not sock


def test_cli_create_uploads_and_publishes_without_the_azure_sdk(infra: Infra, amqp_vhost: str,
                                                                fresh_container: str, tmp_path: Path) -> None:
    # A container the CLI must create itself: the upload finds none, creates it, uploads again.
    container = f"{fresh_container}-new"
    code = textwrap.dedent("""
        import sys
        from tunebus import cli
        code = cli.main(["create", "-c", "examples/sklearn-digits/config.yml", "--id", "cli-rest", "--json"])
        print(code, sorted({name.split(".")[0] for name in sys.modules} & {"azure", "aiohttp"}))
    """)
    env = infra.env(TUNEBUS_AMQP_URL=amqp_vhost, TUNEBUS_STORAGE_CONTAINER=container)
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=120)
        lines = result.stdout.strip().splitlines()
        assert lines[-1] == "0 []", result.stderr
        assert json.loads(lines[-2]) == {"id": "cli-rest", "status": "INITIALIZED", "reason": None,
                                         "trials": {}, "best": None}
        with BlobRestClient.from_connection_string(infra.storage_connection_string, container) as rest:
            archive = rest.get_blob("experiments/cli-rest/code.tar.gz")
            assert archive is not None and archive[:2] == b"\x1f\x8b"
        again = subprocess.run([str(TUNEBUS), "create", "-c",
                                "examples/sklearn-digits/config.yml", "--id", "cli-rest"],
                               env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert "already exists" in again.stderr
    finally:
        with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
            service.delete_container(container)


def test_cli_reading_commands_through_rest(infra: Infra, fresh_container: str) -> None:
    rest = BlobRestClient.from_connection_string(infra.storage_connection_string, fresh_container)
    state = {"experiment_id": "readme1", "status": "DONE", "optimize_mode": "maximize",
             "started_at": "2024-05-01T12:00:00Z", "trials": {}}
    rest.put_blob("experiments/readme1/state.json", json.dumps(state).encode())
    rest.put_blob("experiments/pending1/experiment.json", b'{"config": {"experimentName": "p"}}')
    rest.close()
    env = infra.env(TUNEBUS_STORAGE_CONTAINER=fresh_container)

    def tunebus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TUNEBUS), *args], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    listing = tunebus("experiment", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [(e["id"], e["status"]) for e in json.loads(listing.stdout)] == [
        ("readme1", "DONE"), ("pending1", "INITIALIZED")]
    shown = tunebus("experiment", "show", "pending1")
    assert shown.returncode == 0 and "name        p" in shown.stdout
    unknown = tunebus("trial", "ls", "nosuch")
    assert unknown.returncode == 2
    assert f"no experiment nosuch in container {fresh_container!r}" in unknown.stderr


def test_cli_resume_refuses_what_cannot_be_resumed(infra: Infra, fresh_container: str) -> None:
    rest = BlobRestClient.from_connection_string(infra.storage_connection_string, fresh_container)
    for experiment_id, status in [("draining", "STOPPING"), ("running1", "RUNNING"), ("rejected", "ERROR")]:
        state = {"experiment_id": experiment_id, "status": status, "started_at": "2024-05-01T12:00:00Z",
                 "reason": "trialConcurrency: must be at least 1" if status == "ERROR" else None}
        rest.put_blob(f"experiments/{experiment_id}/state.json", json.dumps(state).encode())
    rest.close()
    env = infra.env(TUNEBUS_STORAGE_CONTAINER=fresh_container)

    def resume(experiment_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TUNEBUS), "resume", experiment_id], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    draining = resume("draining")
    assert draining.returncode == 2 and "resume it once it is STOPPED" in draining.stderr
    running = resume("running1")
    assert running.returncode == 0 and "is RUNNING; nothing to resume" in running.stdout
    rest = BlobRestClient.from_connection_string(infra.storage_connection_string, fresh_container)
    rest.put_blob("experiments/pending2/experiment.json", b'{"config": {}}')  # created, not started
    rest.close()
    pending = resume("pending2")
    assert pending.returncode == 2 and "has not started yet" in pending.stderr
    rejected = resume("rejected")  # its start was rejected: no experiment.json was ever written
    assert rejected.returncode == 2 and "never started: trialConcurrency" in rejected.stderr
