"""Secrets stay out of messages and documents: the wire config, secrets.json, the dispatcher's
start handling, dead-letter copies, and where a trial's metrics go (no I/O: in-memory fakes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from services.dispatcher.lifecycle import Policy
from services.dispatcher.service import Dispatcher
from shared.bus import PermanentError, without_secrets
from shared.config import ExperimentSecrets, parse_experiment_config
from shared.messages import ExperimentStart, ExperimentStatus
from shared.results import (
    SharedStorageError,
    read_secrets,
    shared_storage_account,
    shared_storage_endpoint,
    shared_storage_results_url,
)
from shared.secrets_mask import redact_secrets
from shared.storage import ConcurrentWriteError, Layout
from tests.unit.test_dispatcher_outbox import FakeBus

KEY = "c2VjcmV0LWFjY291bnQta2V5"
SHARED = {"storageType": "AzureBlob", "storageAccountName": "tunebusdata", "containerName": "results",
          "storageAccountKey": KEY, "localMountPoint": "/mnt/data", "remoteMountPoint": "/data",
          "localMounted": "usermount"}


def wire_config(**shared: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py", "trialConcurrency": 1, "maxTrialNumber": 2,
        "tuner": {"name": "Random"}, "trainingService": {"platform": "local"},
    }
    if shared:
        config["sharedStorage"] = shared
    return config


class FakeStore:
    """The part of BlobStore the dispatcher and shared.results use, in memory."""

    def __init__(self) -> None:
        self.blobs: dict[str, Any] = {}

    async def read_json(self, path: str) -> tuple[Any, str] | None:
        return None if path not in self.blobs else (json.loads(json.dumps(self.blobs[path])), "etag")

    async def read_document(self, path: str) -> tuple[bytes, str] | None:
        return None if path not in self.blobs else (json.dumps(self.blobs[path]).encode(), "etag")

    async def write_json(self, path: str, doc: Any, *, etag: str | None = None,
                         create_only: bool = False) -> str:
        if create_only and path in self.blobs:
            raise ConcurrentWriteError(path)
        self.blobs[path] = json.loads(json.dumps(doc, default=str))
        return "etag"

    async def write_bytes(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        self.blobs[path] = data.decode()


def dispatcher() -> tuple[Dispatcher, FakeStore, FakeBus]:
    store, bus = FakeStore(), FakeBus()
    return Dispatcher(bus, store, Policy()), store, bus  # type: ignore[arg-type]


# ---------------------------------------------------------------- config and secrets document


def test_to_wire_leaves_the_key_out_and_secrets_holds_it() -> None:
    config = parse_experiment_config(wire_config(**SHARED))
    wire = config.to_wire()
    assert KEY not in json.dumps(wire) and "storageAccountKey" not in wire["sharedStorage"]
    assert parse_experiment_config(wire).secrets().empty  # the wire form is valid without the key
    assert KEY not in repr(config.secrets()) and KEY not in str(config.secrets())


def test_secrets_document_round_trips() -> None:
    secrets = parse_experiment_config(wire_config(**SHARED)).secrets()
    doc = json.loads(json.dumps(secrets.to_document()))
    assert doc == {"sharedStorageAccountKey": KEY}
    again = ExperimentSecrets.from_document(doc)
    assert again == secrets and again.shared_storage_account_key is not None
    assert again.shared_storage_account_key.get_secret_value() == KEY
    assert ExperimentSecrets.from_document(None).empty and ExperimentSecrets().to_document() == {}


def test_a_masked_key_fed_back_in_is_no_key() -> None:
    normalized = parse_experiment_config(wire_config(**SHARED)).normalized()
    assert normalized["sharedStorage"]["storageAccountKey"] == "***"
    assert parse_experiment_config(normalized).secrets().empty


def test_redact_secrets_masks_every_spelling_at_any_depth() -> None:
    doc = {"config": {"sharedStorage": {"storageAccountKey": KEY, "container_name": "c"},
                      "shared_storage": [{"storage_account_key": KEY}]}, "other": KEY[:4]}
    assert KEY not in json.dumps(redact_secrets(doc))
    assert redact_secrets(doc)["config"]["sharedStorage"]["container_name"] == "c"


def test_a_dead_lettered_copy_has_no_key() -> None:
    msg = ExperimentStart(experiment_id="e1", config=wire_config(**SHARED))
    body = msg.model_dump_json().encode()
    assert KEY in body.decode()
    assert KEY not in without_secrets(body).decode()
    clean = json.loads(without_secrets(body))
    assert clean["config"]["sharedStorage"]["storageAccountKey"] == "***"
    plain = ExperimentStart(experiment_id="e1", config=wire_config()).model_dump_json().encode()
    assert without_secrets(plain) is plain and without_secrets(b"not json") == b"not json"


# ---------------------------------------------------------------- the dispatcher


async def test_dispatcher_moves_a_published_key_into_secrets_json() -> None:
    service, store, bus = dispatcher()
    await service.on_start(ExperimentStart(experiment_id="e1", config=wire_config(**SHARED)))
    layout = Layout("e1")
    experiment = store.blobs[layout.experiment_doc]
    assert "storageAccountKey" not in experiment["config"]["sharedStorage"]
    assert store.blobs[layout.secrets_doc] == {"sharedStorageAccountKey": KEY}
    everything_else = {path: doc for path, doc in store.blobs.items() if path != layout.secrets_doc}
    assert KEY not in json.dumps(everything_else)
    assert KEY not in json.dumps([m.model_dump(mode="json") for m in bus.published])


async def test_dispatcher_keeps_a_secrets_json_written_before_the_start() -> None:
    service, store, _ = dispatcher()
    layout = Layout("e2")
    store.blobs[layout.secrets_doc] = {"sharedStorageAccountKey": KEY}  # as the CLI writes it
    config = parse_experiment_config(wire_config(**SHARED)).to_wire()
    await service.on_start(ExperimentStart(experiment_id="e2", config=config))
    assert store.blobs[layout.secrets_doc] == {"sharedStorageAccountKey": KEY}
    assert layout.state_doc in store.blobs


async def test_dispatcher_rejects_a_shared_storage_without_any_key() -> None:
    service, store, bus = dispatcher()
    config = parse_experiment_config(wire_config(**SHARED)).to_wire()
    with pytest.raises(PermanentError, match=r"sharedStorage\.storageAccountKey: required"):
        await service.on_start(ExperimentStart(experiment_id="e3", config=config))
    assert store.blobs[Layout("e3").state_doc]["status"] == ExperimentStatus.ERROR
    assert Layout("e3").experiment_doc not in store.blobs
    assert [getattr(m, "status", None) for m in bus.published] == [ExperimentStatus.ERROR]


# ---------------------------------------------------------------- where metrics go


def test_shared_storage_account_needs_the_key_and_uses_the_endpoint_template() -> None:
    wire = parse_experiment_config(wire_config(**SHARED)).to_wire()
    secrets = ExperimentSecrets.from_document({"sharedStorageAccountKey": KEY})
    assert shared_storage_account(wire_config(), secrets) is None  # deployment storage
    with pytest.raises(SharedStorageError, match="storageAccountKey"):
        shared_storage_account(wire, ExperimentSecrets())
    account = shared_storage_account(wire, secrets)
    assert account is not None and KEY not in repr(account)
    assert account.container_url == "https://tunebusdata.blob.core.windows.net/results"
    local = shared_storage_account(wire, secrets, endpoint_template="http://127.0.0.1:10000/{account}/")
    assert local is not None and local.container_url == "http://127.0.0.1:10000/tunebusdata/results"
    assert shared_storage_endpoint("acct", "https://{account}.blob.core.chinacloudapi.cn") == (
        "https://acct.blob.core.chinacloudapi.cn")


def test_the_results_url_is_one_blob_append_only_expiring_and_carries_no_key() -> None:
    wire = parse_experiment_config(wire_config(**SHARED)).to_wire()
    account = shared_storage_account(wire, ExperimentSecrets.from_document({"sharedStorageAccountKey": KEY}))
    assert account is not None
    now = datetime(2030, 1, 1, tzinfo=UTC)
    url = shared_storage_results_url(account, "experiments/e/trials/t/results.jsonl", timedelta(hours=2),
                                     now=now)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        account.container_url + "/experiments/e/trials/t/results.jsonl")
    query = parse_qs(parts.query)
    assert query["sp"] == ["a"] and query["sr"] == ["b"]
    assert query["se"] == ["2030-01-01T02:00:00Z"]
    assert KEY not in url


async def test_read_secrets_prefers_secrets_json_and_reads_a_legacy_key_in_the_config() -> None:
    store = FakeStore()
    legacy = wire_config(**SHARED)  # an experiment.json written before keys left the wire form
    found = await read_secrets(store, "old", legacy)  # type: ignore[arg-type]
    assert found.shared_storage_account_key is not None
    store.blobs[Layout("new").secrets_doc] = {"sharedStorageAccountKey": "other"}
    found = await read_secrets(store, "new", legacy)  # type: ignore[arg-type]
    assert found.shared_storage_account_key is not None
    assert found.shared_storage_account_key.get_secret_value() == "other"
    assert (await read_secrets(store, "none", wire_config())).empty  # type: ignore[arg-type]
