"""The submitter service's AML path against Azurite and the stand-in (NOT Azure): claims, the trial
writing its metrics through its results URL (append-only SAS), and how submission errors end a trial."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aml_standin import v1 as standin
from services.aml_submitter.aml import client as aml_client
from services.aml_submitter.aml.backend import AmlBackend
from services.aml_submitter.aml.options import AmlOptions, RetryPolicy
from services.aml_submitter.aml.sdk import azureml_api, standin_api
from services.aml_submitter.service import Submitter
from shared.bus import TransientError
from shared.code_archive import build_code_archive
from shared.messages import TrialStatus, TrialStatusChanged, TrialSubmit
from shared.storage import BlobStore, Layout
from tests.integration.fakes import RecordingBus

pytest.importorskip("azureml.core", reason="azureml-core (the aml extra) is not installed")
pytestmark = pytest.mark.integration

TRIAL = """import nni
params = nni.get_next_parameter()
nni.report_intermediate_result(params["x"] / 2)
nni.report_final_result(params["x"])
"""


class ComputeTargetException(Exception):
    """Named like azureml-core's."""


class _HttpError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def _config() -> dict[str, Any]:
    return {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py", "trialConcurrency": 1, "maxTrialDuration": 600,
        "tuner": {"name": "Random"},
        "trainingService": {"platform": "aml", "subscriptionId": "sub", "resourceGroup": "rg",
                            "workspaceName": "ws", "computeTarget": "cpu-cluster",
                            "dockerImage": "msranni/nni"},
    }


async def _experiment(store: BlobStore, tmp_path: Path, experiment_id: str) -> None:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "trial.py").write_text(TRIAL)
    layout = Layout(experiment_id)
    await store.write_bytes(layout.code_archive, build_code_archive(code))
    await store.write_json(layout.experiment_doc, {"config": _config(), "code_blob": layout.code_archive})


def _submitter(store: BlobStore, tmp_path: Path, api: Any, env: dict[str, str] | None = None,
               ) -> tuple[Submitter, RecordingBus]:
    bus = RecordingBus()
    submitter = Submitter(bus, store, tmp_path / "work", "replica-a")  # type: ignore[arg-type]
    submitter.backends["aml"] = AmlBackend(
        store=store, report=submitter.report, publish_ticket=bus.publish_ticket, work_dir=tmp_path / "work",
        api=api, env=env or {}, options=AmlOptions(poll_seconds=0.05, auth_timeout=10,
                                                   retry=RetryPolicy(attempts=3, base=0.01)),
        deployment_id="itest1",
    )
    return submitter, bus


def _standin(tmp_path: Path, **classes: Any) -> Any:
    settings = standin.StandinSettings(registry=tmp_path / "registry", queue_delay=0.05, prepare_delay=0.05)

    def api() -> SimpleNamespace:
        real = standin_api(settings)
        for name, cls in classes.items():
            setattr(real, name, cls)
        return real

    return api


def _submit(experiment_id: str) -> TrialSubmit:
    return TrialSubmit(experiment_id=experiment_id, trial_id="trial1", sequence_id=0, parameters={"x": 0.25})


async def _drive(submitter: Submitter, bus: RecordingBus, timeout: float = 30) -> TrialStatusChanged:
    deadline = time.monotonic() + timeout
    aml = submitter.backends["aml"]
    while time.monotonic() < deadline:
        ends = [s for s in bus.statuses() if s.status not in (TrialStatus.WAITING, TrialStatus.RUNNING)]
        if ends:
            return ends[-1]
        ticket = bus.tickets.pop(0).model_copy(update={"due": datetime.now(UTC)})
        await aml.on_watch(ticket)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no end: {bus.published}")


async def test_an_aml_trial_runs_and_writes_its_metrics_through_the_sas(store: BlobStore,
                                                                        tmp_path: Path) -> None:
    await _experiment(store, tmp_path, "exp-ok")
    submitter, bus = _submitter(store, tmp_path, _standin(tmp_path))
    await submitter.on_submit(_submit("exp-ok"))
    claim = await store.read_json(Layout("exp-ok").claim_blob("trial1", 1))
    assert claim is not None and claim[0]["state"] == "started"
    end = await _drive(submitter, bus)
    assert end.status == TrialStatus.SUCCEEDED, end.error
    results = await store.read_bytes(Layout("exp-ok").results_blob("trial1"))
    assert results is not None and [line[:14] for line in results.splitlines()] == [
        b'{"sequence":0,', b'{"sequence":1,']
    doc = await store.read_json(Layout("exp-ok").trial_doc("trial1"))
    assert doc is not None and doc[0]["runs"]["1"]["run_id"] == "tunebus_itest1_exp-ok_trial1_1"
    # A redelivered submit starts nothing more.
    await submitter.on_submit(_submit("exp-ok"))
    assert len(list((tmp_path / "registry").iterdir())) == 1


async def test_a_missing_compute_target_fails_the_trial_with_the_reason(store: BlobStore,
                                                                        tmp_path: Path) -> None:
    class ComputeTarget(standin.ComputeTarget):
        def __init__(self, workspace: Any, name: str) -> None:
            raise ComputeTargetException(f"ComputeTargetNotFound: compute target {name} not found")

    await _experiment(store, tmp_path, "exp-perm")
    submitter, bus = _submitter(store, tmp_path, _standin(tmp_path, ComputeTarget=ComputeTarget))
    await submitter.on_submit(_submit("exp-perm"))
    [failed] = bus.statuses()
    assert failed.status == TrialStatus.FAILED
    assert failed.error and failed.error.startswith("submission failed")
    assert "cpu-cluster not found" in failed.error


async def test_throttling_that_goes_on_is_handed_back_to_the_queue(store: BlobStore, tmp_path: Path) -> None:
    class Experiment(standin.Experiment):
        def submit(self, config: Any, tags: Any = None, run_id: str | None = None) -> standin.Run:
            raise _HttpError("429 Too Many Requests", 429)

    await _experiment(store, tmp_path, "exp-429")
    submitter, bus = _submitter(store, tmp_path, _standin(tmp_path, Experiment=Experiment))
    with pytest.raises(TransientError, match="429"):
        await submitter.on_submit(_submit("exp-429"))
    assert not bus.statuses()  # not failed: the delivery is retried


async def test_no_credential_fails_the_trial_naming_every_method(store: BlobStore, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("MSI_ENDPOINT", f"http://127.0.0.1:{closed}/token")  # loopback: refuses at once
    await _experiment(store, tmp_path, "exp-auth")
    submitter, bus = _submitter(store, tmp_path, azureml_api, env={"PATH": str(tmp_path)})
    await submitter.on_submit(_submit("exp-auth"))
    [failed] = bus.statuses()
    assert failed.status == TrialStatus.FAILED and failed.error
    for words in ("service principal", "managed identity", "Azure CLI", "az login", "AZURE_CLIENT_SECRET"):
        assert words in failed.error
    # Not tried again for every trial: the failure is remembered for a while.
    tried: list[object] = []
    real_resolve = aml_client.resolve_auth

    def resolve_auth(*args: Any, **kwargs: Any) -> Any:
        tried.append(args)
        return real_resolve(*args, **kwargs)

    monkeypatch.setattr(aml_client, "resolve_auth", resolve_auth)
    await submitter.on_submit(TrialSubmit(experiment_id="exp-auth", trial_id="trial2", sequence_id=1,
                                          parameters={"x": 0.5}))
    assert bus.statuses()[-1].status == TrialStatus.FAILED and "az login" in (bus.statuses()[-1].error or "")
    assert tried == []




async def test_a_submit_sent_again_adopts_the_run_and_watches_it_anew(store: BlobStore,
                                                                     tmp_path: Path) -> None:
    # The dispatcher heard nothing of the run for long (its watch ticket was lost with the
    # broker): it sends trial.submit again. The claim says "started", yet the run is adopted
    # (the same run, not a second one) and a new watch chain follows it to its end.
    await _experiment(store, tmp_path, "exp-again")
    submitter, bus = _submitter(store, tmp_path, _standin(tmp_path))
    await submitter.on_submit(_submit("exp-again"))
    [first_watch] = bus.tickets
    bus.tickets.clear()  # lost with the broker
    await submitter.on_submit(_submit("exp-again"))  # a plain duplicate: the claim stops it
    assert not bus.tickets
    await submitter.on_submit(_submit("exp-again").model_copy(update={"resubmit": True}))
    [second_watch] = bus.tickets
    assert second_watch.state["run_id"] == first_watch.state["run_id"]
    runs = sorted(p.name for p in (tmp_path / "registry").iterdir() if p.is_dir())
    assert runs == [first_watch.state["run_id"]]  # one run, never a second
    end = await _drive(submitter, bus)
    assert end.status == TrialStatus.SUCCEEDED
