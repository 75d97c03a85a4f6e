"""What a trial's results URL allows, against Azurite: appending to its own results blob and
nothing else (no read, list, create, overwrite or delete, on no other blob), until it expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, ContainerClient

from shared.config import ExperimentSecrets
from shared.results import SharedStorageError, shared_storage_account, shared_storage_results_url
from shared.storage import BlobStore, parse_connection_string
from tests.conftest import Infra

pytestmark = pytest.mark.integration

RESULTS = "experiments/e/trials/t/results.jsonl"


def _create(infra: Infra, container: str, blob: str = RESULTS) -> None:
    """What the submitter does before the trial starts: create the empty append blob."""
    async def create() -> None:
        async with BlobStore(infra.storage_connection_string, container) as store:
            await store.create_append_blob(blob)

    asyncio.run(create())


def _deployment_sas(infra: Infra, container: str, lifetime: timedelta) -> str:
    store = BlobStore(infra.storage_connection_string, container)
    return store.results_sas_url(RESULTS, lifetime)  # no I/O: signing only


def _shared_storage_sas(infra: Infra, container: str, lifetime: timedelta) -> str:
    fields = parse_connection_string(infra.storage_connection_string)
    config = {"sharedStorage": {  # wire form: the key is in the secrets, not in the config
        "storageType": "AzureBlob", "storageAccountName": fields["AccountName"], "containerName": container,
        "localMountPoint": "/mnt/x", "remoteMountPoint": "/x", "localMounted": "usermount",
    }}
    secrets = ExperimentSecrets.from_document({"sharedStorageAccountKey": fields["AccountKey"]})
    template = fields["BlobEndpoint"].replace(fields["AccountName"], "{account}")
    account = shared_storage_account(config, secrets, endpoint_template=template)
    assert account is not None
    return shared_storage_results_url(account, RESULTS, lifetime)


@pytest.fixture(params=["deployment", "sharedStorage"])
def make_sas(request: pytest.FixtureRequest, infra: Infra, fresh_container: str) -> Iterator[object]:
    maker = _deployment_sas if request.param == "deployment" else _shared_storage_sas
    _create(infra, fresh_container)
    yield lambda lifetime: maker(infra, fresh_container, lifetime)


def _forbidden(call: object) -> None:
    with pytest.raises(HttpResponseError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.status_code == 403, caught.value


def _elsewhere(url: str, blob: str) -> str:
    """The same SAS on another blob of the container."""
    parts = urlsplit(url)
    container_path = parts.path[: parts.path.index("/experiments/")]
    return f"{parts.scheme}://{parts.netloc}{container_path}/{blob}?{parts.query}"


def test_a_trials_url_appends_to_its_blob_and_does_nothing_else(make_sas: object, infra: Infra,
                                                                  fresh_container: str) -> None:
    url = make_sas(timedelta(hours=1))  # type: ignore[operator]
    assert parse_connection_string(infra.storage_connection_string)["AccountKey"] not in url
    trial = BlobClient.from_blob_url(url)
    trial.append_block(b'{"sequence":0}\n')
    trial.append_block(b'{"sequence":1}\n')

    _forbidden(lambda: trial.download_blob().readall())
    _forbidden(lambda: trial.get_blob_properties())
    _forbidden(lambda: trial.upload_blob(b"overwritten", overwrite=True))
    _forbidden(lambda: trial.create_append_blob())  # would truncate it
    _forbidden(lambda: trial.delete_blob())
    _forbidden(lambda: trial.set_blob_metadata({"a": "b"}))
    _forbidden(lambda: trial.acquire_lease())
    _forbidden(lambda: trial.create_snapshot())
    for other in ("experiments/e/code.tar.gz", "experiments/e/state.json", "planted",
                  "experiments/e/trials/t2/results.jsonl"):
        elsewhere = BlobClient.from_blob_url(_elsewhere(url, other))
        _forbidden(lambda c=elsewhere: c.upload_blob(b"x", overwrite=True))  # type: ignore[misc]
        _forbidden(lambda c=elsewhere: c.download_blob().readall())  # type: ignore[misc]
    _create(infra, fresh_container, "experiments/e/trials/t2/results.jsonl")
    _forbidden(lambda: BlobClient.from_blob_url(_elsewhere(url, "experiments/e/trials/t2/results.jsonl"))
               .append_block(b"forged\n"))
    container_url = _elsewhere(url, "x").replace("/x?", "?")
    _forbidden(lambda: list(ContainerClient.from_container_url(container_url).list_blobs()))

    # The service (with the key) sees what the trial appended, and nothing else was written.
    owner = ContainerClient.from_connection_string(infra.storage_connection_string, fresh_container)
    assert owner.download_blob(RESULTS).readall() == b'{"sequence":0}\n{"sequence":1}\n'
    assert sorted(b.name for b in owner.list_blobs()) == [RESULTS, "experiments/e/trials/t2/results.jsonl"]
    assert owner.download_blob("experiments/e/trials/t2/results.jsonl").readall() == b""


def test_a_trials_url_cannot_append_after_it_expires(make_sas: object) -> None:
    url = make_sas(timedelta(seconds=2))  # type: ignore[operator]
    trial = BlobClient.from_blob_url(url)
    trial.append_block(b"a\n")
    time.sleep(3.5)
    _forbidden(lambda: trial.append_block(b"b\n"))


def test_shared_storage_without_a_key_gives_no_url() -> None:
    config = {"sharedStorage": {"storageType": "AzureBlob", "storageAccountName": "a", "containerName": "c"}}
    with pytest.raises(SharedStorageError, match="storageAccountKey"):
        shared_storage_account(config, ExperimentSecrets())
    assert shared_storage_account({}, ExperimentSecrets()) is None  # the deployment's storage


def test_shared_storage_url_points_at_the_public_account_endpoint() -> None:
    config = {"sharedStorage": {"storageType": "AzureBlob", "storageAccountName": "tunebusdata",
                                "containerName": "experiments"}}
    secrets = ExperimentSecrets.from_document({"sharedStorageAccountKey": "c2VjcmV0LWtleQ=="})
    account = shared_storage_account(config, secrets)
    assert account is not None
    url = shared_storage_results_url(account, RESULTS, timedelta(hours=2))
    assert url.startswith(f"https://tunebusdata.blob.core.windows.net/experiments/{RESULTS}?")
    assert "sp=a&" in url and "sr=b" in url and "c2VjcmV0LWtleQ" not in url
