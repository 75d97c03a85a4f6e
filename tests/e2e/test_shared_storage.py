"""An experiment with ``sharedStorage`` (AzureBlob) end to end: the trials' metrics land in that
container, and its account key is in no message, no ``experiment.json`` and no service log."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from shared.messages import ExperimentStart
from shared.storage import BlobStore, Layout
from shared.topology import DEAD_LETTER_QUEUE, EVENTS_EXCHANGE
from tests.e2e.conftest import SharedStorage, Stack, publish, wait_finished, write_experiment

pytestmark = pytest.mark.e2e

TRIAL = """import nni
p = nni.get_next_parameter()
nni.report_intermediate_result(p["x"] / 2)
nni.report_final_result(p["x"])
"""


class Capture:
    """Every message on the events exchange (a queue bound to ``#``), read back at the end."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue

    async def bodies(self) -> list[bytes]:
        found = []
        while (message := await self.queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            found.append(message.body)
        return found


@pytest.fixture
async def capture(stack: Stack) -> AsyncIterator[Capture]:
    connection = await aio_pika.connect(stack.env["TUNEBUS_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(EVENTS_EXCHANGE, routing_key="#")
        yield Capture(queue)


def _store(stack: Stack, container: str | None = None) -> BlobStore:
    return BlobStore(stack.env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                     container or stack.env["TUNEBUS_STORAGE_CONTAINER"])


def _service_logs(stack: Stack) -> str:
    return "\n".join(p.read_text(errors="replace") for p in stack.run_dir.glob("*.log"))


async def test_metrics_go_to_the_shared_container_and_the_key_travels_nowhere(
        stack: Stack, shared_storage: SharedStorage, capture: Capture, tmp_path: Path) -> None:
    config = write_experiment(tmp_path, TRIAL, maxTrialNumber=3, sharedStorage=shared_storage.config())

    summary = await asyncio.to_thread(stack.create, str(config))

    assert summary["status"] == "DONE", (summary, stack.logs())
    assert summary["trials"] == {"SUCCEEDED": 3}
    experiment_id = str(summary["id"])
    layout = Layout(experiment_id)
    state = await wait_finished(stack, experiment_id)
    assert all(t.metric_count == 2 for t in state.trials.values()), stack.logs()
    async with _store(stack, shared_storage.container) as shared, _store(stack) as deployment:
        in_shared = [n for n in await shared.list(layout.root + "/") if n.endswith("/results.jsonl")]
        in_deployment = [n for n in await deployment.list(layout.root + "/") if n.endswith("/results.jsonl")]
        experiment_doc = await deployment.read_bytes(layout.experiment_doc)
        secrets = await deployment.read_json(layout.secrets_doc)
    assert len(in_shared) == 3 and in_deployment == []  # 3 trials, one results blob each
    assert experiment_doc is not None and shared_storage.key.encode() not in experiment_doc
    assert json.loads(experiment_doc)["config"]["sharedStorage"]["containerName"] == shared_storage.container
    assert secrets is not None and secrets[0] == {"sharedStorageAccountKey": shared_storage.key}
    bodies = await capture.bodies()
    assert any(b'"experiment.start"' in b or b'"config"' in b for b in bodies)  # the start was seen
    assert all(shared_storage.key.encode() not in body for body in bodies)
    assert shared_storage.key not in _service_logs(stack)


async def test_a_key_published_in_the_message_is_moved_out_and_not_dead_lettered(
        stack: Stack, shared_storage: SharedStorage) -> None:
    config: dict[str, object] = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 -c \"import nni; nni.report_final_result(nni.get_next_parameter()['x'])\"",
        "trialConcurrency": 1, "maxTrialNumber": 1, "tuner": {"name": "Random"},
        "trainingService": {"platform": "local"}, "sharedStorage": shared_storage.config(),
    }
    good = f"pub{uuid.uuid4().hex[:8]}"
    await publish(stack, ExperimentStart(experiment_id=good, config=config))
    assert (await wait_finished(stack, good)).status == "DONE", stack.logs()
    async with _store(stack) as deployment:
        experiment_doc = await deployment.read_bytes(Layout(good).experiment_doc)
    assert experiment_doc is not None and shared_storage.key.encode() not in experiment_doc

    bad = f"bad{uuid.uuid4().hex[:8]}"
    await publish(stack, ExperimentStart(experiment_id=bad, config={**config, "trialConcurrency": 0}))
    assert (await wait_finished(stack, bad, timeout=30)).status == "ERROR"
    connection = await aio_pika.connect(stack.env["TUNEBUS_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(DEAD_LETTER_QUEUE)
        # The state says ERROR a moment before the dead letter is out: wait for it (bounded).
        deadline = time.monotonic() + 30
        while (message := await queue.get(timeout=5, fail=False)) is None:
            assert time.monotonic() < deadline, "no dead letter within 30 s"
            await asyncio.sleep(0.1)
        await message.ack()
    assert json.loads(message.body)["experiment_id"] == bad
    assert shared_storage.key.encode() not in message.body
    assert json.loads(message.body)["config"]["sharedStorage"]["storageAccountKey"] == "***"
    assert shared_storage.key not in _service_logs(stack)
