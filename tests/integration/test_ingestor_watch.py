"""The ingestor polls a running trial's metrics only when an assessor judges them live."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.metric_ingestor.service import Ingestor
from shared.messages import TrialEnded, TrialStatus, TrialStatusChanged
from shared.storage import BlobStore, Layout
from tests.conftest import Infra
from tests.integration.fakes import RecordingBus

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(infra: Infra, fresh_container: str) -> AsyncIterator[BlobStore]:
    async with BlobStore(infra.storage_connection_string, fresh_container) as blob_store:
        yield blob_store


@pytest.mark.parametrize("assessor", [None, {"name": "Medianstop", "classArgs": {"start_step": 2}}])
async def test_watching_a_running_trial_only_for_an_assessor(store: BlobStore, assessor: object) -> None:
    experiment_id = "watch1"
    config: dict[str, object] = {"trialConcurrency": 1, "trialCommand": "true",
                                 "trainingService": {"platform": "local"}}
    if assessor:
        config["assessor"] = assessor
    await store.write_json(Layout(experiment_id).experiment_doc, {"config": config})
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=0.1)  # type: ignore[arg-type]

    running = TrialStatusChanged(experiment_id=experiment_id, trial_id="t1", parameter_id=0,
                                 status=TrialStatus.RUNNING)
    await ingestor.on_status(running)
    assert len(bus.tickets) == (1 if assessor else 0)

    ended = running.model_copy(update={"status": TrialStatus.SUCCEEDED, "message_id": "m2"})
    await ingestor.on_status(ended)
    assert [type(m) for m in bus.published] == [TrialEnded]
    marker = await store.read_json(Layout(experiment_id).attempt_root("t1") + "/ended.json")
    assert (marker is not None) == bool(assessor)  # the marker only stops a watch
