"""A hostile trial (tests/hostile/hostile_trial.py) tries everything it should not be able to do, as a
local trial and as an AML stand-in run (NOT Azure): every attempt fails, and what it may do works."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aml_standin import v1 as standin
from services.aml_submitter.aml.backend import AmlBackend
from services.aml_submitter.aml.options import AmlOptions, RetryPolicy
from services.aml_submitter.aml.sdk import standin_api
from services.aml_submitter.backend_setup import standin_sandbox
from services.aml_submitter.local import LocalBackend
from services.aml_submitter.service import Submitter
from shared.code_archive import build_code_archive
from shared.messages import TERMINAL_TRIAL_STATUSES, TrialStatus, TrialStatusChanged, TrialSubmit
from shared.sandbox import Sandbox, make_non_dumpable
from shared.storage import BlobStore, Layout, parse_connection_string
from tests.conftest import Infra
from tests.integration.fakes import RecordingBus

pytestmark = pytest.mark.integration

HOSTILE = Path(__file__).resolve().parents[1] / "hostile" / "hostile_trial.py"
CANARY = "canary-client-secret-7f3e9a"
AML = {"platform": "aml", "subscriptionId": "sub", "resourceGroup": "rg", "workspaceName": "ws",
       "computeTarget": "cpu-cluster", "dockerImage": "msranni/nni"}


async def _experiment(store: BlobStore, work_dir: Path, experiment_id: str, platform: dict[str, str]) -> None:
    code = work_dir / "src"
    code.mkdir()
    shutil.copy(HOSTILE, code / "trial.py")
    layout = Layout(experiment_id)
    config = {"searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
              "trialCommand": "python3 trial.py", "trialConcurrency": 1, "maxTrialDuration": 600,
              "tuner": {"name": "Random"},
              "trainingService": platform}
    await store.write_bytes(layout.code_archive, build_code_archive(code))
    await store.write_json(layout.experiment_doc, {"config": config, "code_blob": layout.code_archive})
    await store.create_append_blob(layout.results_blob("sibling"))  # another trial's, to forge into


async def _end(submitter: Submitter, bus: RecordingBus, timeout: float = 60) -> TrialStatusChanged:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in bus.published:
            if isinstance(msg, TrialStatusChanged) and msg.status in TERMINAL_TRIAL_STATUSES:
                return msg
        if bus.tickets and "aml" in submitter.backends:  # drive the AML watch as its queue would
            ticket = bus.tickets.pop(0).model_copy(update={"due": datetime.now(UTC)})
            await submitter.backends["aml"].on_watch(ticket)  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no end: {bus.published}")


def _submitter(store: BlobStore, work_dir: Path, platform: str) -> tuple[Submitter, RecordingBus]:
    bus = RecordingBus()
    submitter = Submitter(bus, store, work_dir / "work", "replica-h")  # type: ignore[arg-type]
    sandbox = Sandbox.for_this_process()
    if platform == "local":
        submitter.backends["local"] = LocalBackend(work_dir / "work", submitter.report, submitter.upload_logs,
                                                   sandbox=sandbox)
    else:
        settings = standin.StandinSettings(registry=work_dir / "work" / "registry",
                                           sandbox=standin_sandbox(sandbox, work_dir / "work"))
        submitter.backends["aml"] = AmlBackend(
            store=store, report=submitter.report, publish_ticket=bus.publish_ticket,
            work_dir=work_dir / "work",
            api=lambda: standin_api(settings), env={}, deployment_id="hostile",
            options=AmlOptions(poll_seconds=0.05, auth_timeout=10, retry=RetryPolicy(attempts=2, base=0.01)))
    return submitter, bus


async def _trial_stdout(store: BlobStore, work_dir: Path, platform: str) -> str:
    if platform == "local":  # uploaded once the trial ended (its folders are then deleted)
        deadline = time.monotonic() + 60
        while (body := await store.read_bytes(Layout("hx").log_blob("t1", "stdout"))) is None:
            assert time.monotonic() < deadline, "the trial's stdout was never uploaded"
            await asyncio.sleep(0.2)
        assert not (work_dir / "work" / "hx" / "trials" / "t1" / "attempt-1").exists()
        return body.decode()
    [log] = (work_dir / "work" / "registry").glob("*/std_log.txt")
    return log.read_text()


@pytest.mark.parametrize("platform", ["local", "aml"])
async def test_a_hostile_trial_gets_nowhere(store: BlobStore, infra: Infra, work_dir: Path, platform: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if platform == "aml":
        pytest.importorskip("azureml.core", reason="azureml-core (the aml extra) is not installed")
    # The submitter's own secrets, as a deployment gives them.
    monkeypatch.setenv("AZURE_CLIENT_SECRET", CANARY)
    monkeypatch.setenv("TUNEBUS_STORAGE_CONNECTION_STRING", infra.storage_connection_string)
    monkeypatch.setenv("TUNEBUS_AMQP_URL", infra.amqp_url)
    make_non_dumpable()  # as the submitter service does at its start
    key = parse_connection_string(infra.storage_connection_string)["AccountKey"]
    amqp = urlsplit(infra.amqp_url)
    await _experiment(store, work_dir, "hx", {"platform": "local"} if platform == "local" else AML)
    submitter, bus = _submitter(store, work_dir, platform)
    # Reversed: a secret must not sit verbatim in the trial's own parameters (its environment).
    secrets = [CANARY[::-1], key[::-1], (amqp.password or "")[::-1]]
    try:
        await submitter.on_submit(TrialSubmit(
            experiment_id="hx", trial_id="t1", sequence_id=0,
            parameters={"secrets": secrets, "sibling": "sibling", "amqp": f"{amqp.hostname}:{amqp.port}",
                        "code_read_only": platform == "local" and os.geteuid() == 0}))
        end = await _end(submitter, bus)
        assert end.status == TrialStatus.SUCCEEDED, end.error
        stdout = await _trial_stdout(store, work_dir, platform)
    finally:
        for backend in submitter.backends.values():
            await backend.close()
    assert end.status == TrialStatus.SUCCEEDED, end.error
    found: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert len(found) >= 20
    succeeded = {attempt: outcome for attempt, outcome in found.items() if not outcome.startswith("refused")}
    assert succeeded == {}, f"the hostile trial got through: {succeeded}"

    # What it may do worked: its one final result, in its own results blob; nothing else changed.
    layout = Layout("hx")
    results = await store.read_bytes(layout.results_blob("t1"))
    assert results is not None and [json.loads(line)["kind"] for line in results.splitlines()] == ["FINAL"]
    assert await store.read_bytes(layout.results_blob("sibling")) == b""
    names = await store.list("")
    assert "planted.txt" not in names and layout.state_doc not in names
    assert (await store.read_bytes(layout.code_archive) or b"")[:2] == b"\x1f\x8b"  # still the gzip written
    if os.geteuid() == 0:
        assert found["running as root"] == "refused"
    if platform == "local" and os.geteuid() == 0:  # as the trial user, the code folder is read-only
        assert found["plant a file in my code folder"].startswith("refused")
        assert found["change my own script"].startswith("refused")
