"""An experiment with an AzureBlob ``sharedStorage``, against Azurite: the submitter gives a local
trial an append-only SAS of its results blob in *that* container, the trial writes its metrics there,
and the ingestor
reads them from there (and not from the deployment's container, which keeps the end marker)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobServiceClient

from services.aml_submitter.local import LocalBackend
from services.aml_submitter.service import Submitter
from services.metric_ingestor.results import ResultsStores
from services.metric_ingestor.service import Ingestor
from shared.code_archive import build_code_archive
from shared.messages import (
    TERMINAL_TRIAL_STATUSES,
    TrialEnded,
    TrialMetric,
    TrialStatus,
    TrialStatusChanged,
    TrialSubmit,
)
from shared.storage import BlobStore, Layout, parse_connection_string
from tests.conftest import Infra
from tests.integration.fakes import RecordingBus

pytestmark = pytest.mark.integration


@pytest.fixture
def tmp_path(reachable_dir: Path) -> Path:
    """pytest's tmp_path, but where the unprivileged trial user can reach it (a root submitter
    runs trials as that user, and pytest's own tmp folders are private to root)."""
    return reachable_dir

TRIAL = """import nni
params = nni.get_next_parameter()
nni.report_intermediate_result(params["x"] / 2)
nni.report_final_result(params["x"])
"""


@dataclass(frozen=True)
class Shared:
    """The sharedStorage of the test: Azurite's account, a container of its own."""

    account: str
    key: str
    container: str
    endpoint_template: str


@pytest.fixture
def shared(infra: Infra) -> Iterator[Shared]:
    fields = parse_connection_string(infra.storage_connection_string)
    name = f"shared-{uuid.uuid4().hex[:16]}"
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        service.create_container(name)
        yield Shared(fields["AccountName"], fields["AccountKey"], name,
                     fields["BlobEndpoint"].replace(fields["AccountName"], "{account}"))
        service.delete_container(name)


async def _experiment(store: BlobStore, tmp_path: Path, experiment_id: str, shared: Shared) -> None:
    """experiment.json (wire form: no key) and secrets.json, as the CLI and dispatcher write them."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "trial.py").write_text(TRIAL)
    layout = Layout(experiment_id)
    config = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py", "trialConcurrency": 1, "maxTrialDuration": 600,
        "tuner": {"name": "Random"}, "trainingService": {"platform": "local"},
        "sharedStorage": {"storageType": "AzureBlob", "storageAccountName": shared.account,
                          "containerName": shared.container, "localMountPoint": "/mnt/x",
                          "remoteMountPoint": "/x", "localMounted": "usermount"},
    }
    await store.write_bytes(layout.code_archive, build_code_archive(code))
    await store.write_json(layout.experiment_doc, {"config": config, "code_blob": layout.code_archive})
    await store.write_json(layout.secrets_doc, {"sharedStorageAccountKey": shared.key}, create_only=True)


async def _trial_end(bus: RecordingBus, timeout: float = 30) -> TrialStatusChanged:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in bus.published:
            if isinstance(msg, TrialStatusChanged) and msg.status in TERMINAL_TRIAL_STATUSES:
                return msg
        await asyncio.sleep(0.05)
    raise AssertionError(f"no end: {bus.published}")


def _forbidden(call: Any) -> None:
    with pytest.raises(HttpResponseError) as caught:
        call()
    assert caught.value.status_code == 403, caught.value


async def test_metrics_go_to_the_shared_storage_container_and_are_read_from_there(
        store: BlobStore, shared: Shared, tmp_path: Path) -> None:
    experiment_id = "exp-shared"
    layout = Layout(experiment_id)
    await _experiment(store, tmp_path, experiment_id, shared)
    bus = RecordingBus()
    submitter = Submitter(bus, store, tmp_path / "work", "replica-a",  # type: ignore[arg-type]
                          shared_storage_endpoint=shared.endpoint_template)
    local = LocalBackend(tmp_path / "work", submitter.report, submitter.upload_logs)
    submitter.backends["local"] = local
    try:
        await submitter.on_submit(TrialSubmit(experiment_id=experiment_id, trial_id="trial1", sequence_id=0,
                                              parameters={"x": 0.5}))
        end = await _trial_end(bus)
    finally:
        await local.close()
    assert end.status == TrialStatus.SUCCEEDED, end.error

    # The trial's URL is its results blob in the shared container, append-only, with no key.
    results = layout.results_blob("trial1")
    url = submitter._results_sas_url(await submitter._experiment(experiment_id), results)
    assert url.split("?")[0].endswith(f"/{shared.container}/{results}") and shared.key not in url
    trial_view = BlobClient.from_blob_url(url)
    _forbidden(lambda: trial_view.download_blob().readall())
    _forbidden(lambda: trial_view.upload_blob(b"x", overwrite=True))

    # The results are in the shared container, not in the deployment's.
    async with BlobStore(store.connection_string, shared.container) as shared_store:
        found = await shared_store.read_bytes(results)
        assert found is not None and len(found.splitlines()) == 2
    assert await store.read_bytes(results) is None

    # The ingestor reads them from there (no assessor: no watch, so no end marker either).
    ingestor_bus = RecordingBus()
    results = ResultsStores(store, endpoint_template=shared.endpoint_template)
    ingestor = Ingestor(ingestor_bus, store, 0.1, results)  # type: ignore[arg-type]
    try:
        await ingestor.on_status(end)
    finally:
        await results.close()
    metrics = [m for m in ingestor_bus.published if isinstance(m, TrialMetric)]
    [ended] = [m for m in ingestor_bus.published if isinstance(m, TrialEnded)]
    assert [m.value for m in metrics] == [0.25, 0.5]
    assert (ended.status, ended.final_value, ended.metric_count, ended.error) == (
        TrialStatus.SUCCEEDED, 0.5, 2, None)
    assert await store.read_json(layout.attempt_root("trial1") + "/ended.json") is None
    published = json.dumps([m.model_dump(mode="json") for m in [*bus.published, *ingestor_bus.published]])
    assert shared.key not in published


async def test_a_missing_shared_container_is_reported_on_the_trial(store: BlobStore, shared: Shared,
                                                                  tmp_path: Path) -> None:
    gone = Shared(shared.account, shared.key, f"missing-{uuid.uuid4().hex[:8]}", shared.endpoint_template)
    await _experiment(store, tmp_path, "exp-missing", gone)
    bus = RecordingBus()
    results = ResultsStores(store, endpoint_template=shared.endpoint_template)
    try:
        await Ingestor(bus, store, 0.1, results).on_status(  # type: ignore[arg-type]
            TrialStatusChanged(experiment_id="exp-missing", trial_id="t", parameter_id=0,
                               status=TrialStatus.FAILED, error="write failed"))
    finally:
        await results.close()
    [ended] = [m for m in bus.published if isinstance(m, TrialEnded)]
    assert ended.error is not None and f"{gone.container!r} does not exist" in ended.error
