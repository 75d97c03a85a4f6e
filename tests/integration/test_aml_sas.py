"""What a trial's SAS URL allows, against Azurite: create and write blobs, nothing else, until it expires."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient

from shared.config import ExperimentSecrets
from shared.results import SharedStorageError, shared_storage_account, shared_storage_metrics_url
from shared.storage import BlobStore, parse_connection_string
from tests.conftest import Infra

pytestmark = pytest.mark.integration


def _deployment_sas(infra: Infra, container: str, lifetime: timedelta) -> str:
    store = BlobStore(infra.storage_connection_string, container)
    return store.write_only_sas_url(lifetime)  # no I/O: signing only


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
    return shared_storage_metrics_url(account, lifetime)


@pytest.fixture(params=["deployment", "sharedStorage"])
def make_sas(request: pytest.FixtureRequest, infra: Infra, fresh_container: str) -> Iterator[object]:
    maker = _deployment_sas if request.param == "deployment" else _shared_storage_sas
    yield lambda lifetime: maker(infra, fresh_container, lifetime)


def _forbidden(call: object) -> None:
    with pytest.raises(HttpResponseError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.status_code == 403, caught.value


def test_a_trials_sas_writes_but_cannot_read_list_or_delete(make_sas: object, infra: Infra,
                                                            fresh_container: str) -> None:
    url = make_sas(timedelta(hours=1))  # type: ignore[operator]
    assert "AccountKey" not in url and parse_connection_string(infra.storage_connection_string)[
        "AccountKey"] not in url
    trial = ContainerClient.from_container_url(url)
    trial.upload_blob("experiments/e/trials/t/metrics/000000.json", b'{"value": 1}')
    trial.upload_blob("experiments/e/trials/t/metrics/000000.json", b'{"value": 2}', overwrite=True)

    _forbidden(lambda: trial.download_blob("experiments/e/trials/t/metrics/000000.json").readall())
    _forbidden(lambda: list(trial.list_blobs()))
    _forbidden(lambda: trial.delete_blob("experiments/e/trials/t/metrics/000000.json"))

    # The service (with the key) sees what the trial wrote.
    owner = ContainerClient.from_connection_string(infra.storage_connection_string, fresh_container)
    assert owner.download_blob("experiments/e/trials/t/metrics/000000.json").readall() == b'{"value": 2}'


def test_a_trials_sas_cannot_write_after_it_expires(make_sas: object) -> None:
    url = make_sas(timedelta(seconds=2))  # type: ignore[operator]
    trial = ContainerClient.from_container_url(url)
    trial.upload_blob("m/000000.json", b"{}")
    time.sleep(3.5)
    _forbidden(lambda: trial.upload_blob("m/000001.json", b"{}"))


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
    url = shared_storage_metrics_url(account, timedelta(hours=2))
    assert url.startswith("https://tunebusdata.blob.core.windows.net/experiments?")
    assert "sp=cw" in url and "c2VjcmV0LWtleQ" not in url
