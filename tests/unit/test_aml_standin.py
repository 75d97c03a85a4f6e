"""The AML stand-in (NOT Azure): takes the real ScriptRunConfig, runs it locally, walks AML's statuses."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.aml_submitter.aml import standin
from services.aml_submitter.aml.job import AmlTarget, build_script_run_config, build_snapshot
from services.aml_submitter.backend import JobRequest
from services.aml_submitter.trial_env import TrialIdentity

pytest.importorskip("azureml.core", reason="azureml-core (the aml extra) is not installed")

TERMINAL = {"Completed", "Failed", "Canceled"}


def _config(command: str) -> dict[str, Any]:
    return {
        "trialCommand": command,
        "trialConcurrency": 1,
        "trainingService": {"platform": "aml", "subscriptionId": "s", "resourceGroup": "r",
                            "workspaceName": "ws", "computeTarget": "cpu", "dockerImage": "img"},
    }


def _submit(tmp_path: Path, command: str, *, settings: standin.StandinSettings,
            run_id: str = "run-1", code: dict[str, str] | None = None) -> standin.Run:
    code_dir = None
    if code:
        code_dir = tmp_path / "code"
        code_dir.mkdir(exist_ok=True)
        for name, text in code.items():
            (code_dir / name).write_text(text)
    job = JobRequest(TrialIdentity("e1", "t1", 3), {"x": 2}, _config(command), code_dir,
                     "http://127.0.0.1:1/devstoreaccount1/c?sig=x")
    snapshot = build_snapshot(job, tmp_path / f"snap-{run_id}")
    config = build_script_run_config(job, AmlTarget.from_config(job.config), snapshot,
                                     SimpleNamespace(name="cpu"))
    workspace = standin.Workspace("s", "r", "ws", settings=settings)
    compute = standin.ComputeTarget(workspace, "cpu")
    assert compute.name == "cpu"
    return standin.Experiment(workspace, "tunebus-e1").submit(config, tags={"k": "v"}, run_id=run_id)


def _statuses_until_end(run: standin.Run, timeout: float = 20) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.get_status()
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in TERMINAL:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"run did not end: {seen}")


@pytest.fixture
def settings(tmp_path: Path) -> standin.StandinSettings:
    return standin.StandinSettings(registry=tmp_path / "registry", queue_delay=0.3, prepare_delay=0.3)


def test_a_run_walks_amls_statuses_and_runs_the_command_with_its_environment(
        tmp_path: Path, settings: standin.StandinSettings) -> None:
    trial = ("import json, os, nni\n"
             "p = nni.get_next_parameter()\n"
             "open('out.json', 'w').write(json.dumps({'p': p, 'platform': os.environ['NNI_PLATFORM'],\n"
             "    'service_settings': [k for k in os.environ if k.startswith('TUNEBUS_STORAGE')]}))\n")
    os.environ["TUNEBUS_STORAGE_CONNECTION_STRING"] = "AccountKey=must-not-reach-the-trial"
    try:
        run = _submit(tmp_path, "python3 trial.py", settings=settings, code={"trial.py": trial})
    finally:
        del os.environ["TUNEBUS_STORAGE_CONNECTION_STRING"]
    seen = _statuses_until_end(run)
    assert seen[-1] == "Completed", run.get_details()
    order = ["NotStarted", "Queued", "Preparing", "Starting", "Running", "Finalizing", "Completed"]
    assert [s for s in order if s in seen] == seen  # in AML's order, none invented
    assert {"Queued", "Preparing", "Running", "Completed"} <= set(seen)  # the delays make these visible
    import json

    out = json.loads((settings.registry / "run-1" / "wd" / "out.json").read_text())
    assert out == {"p": {"x": 2}, "platform": "aml", "service_settings": []}
    details = run.get_details()
    assert details["status"] == "Completed" and "error" not in details
    assert details["tags"] == {"k": "v"}
    assert run.get_portal_url().startswith("standin://not-azure/")


def test_a_failed_run_has_an_error_in_its_details(tmp_path: Path, settings: standin.StandinSettings) -> None:
    run = _submit(tmp_path, "echo 'CUDA out of memory' >&2; exit 3", settings=settings)
    assert _statuses_until_end(run)[-1] == "Failed"
    error = run.get_details()["error"]["error"]
    assert error["code"] == "UserError"
    assert "exited with code 3" in error["message"] and "CUDA out of memory" in error["message"]


def test_cancel_stops_the_command(tmp_path: Path, settings: standin.StandinSettings) -> None:
    run = _submit(tmp_path, "sleep 60", settings=settings)
    deadline = time.monotonic() + 10
    while run.get_status() != "Running" and time.monotonic() < deadline:
        time.sleep(0.02)
    run.cancel()
    seen = _statuses_until_end(run, timeout=10)
    assert seen[-1] == "Canceled"
    run.cancel()  # cancelling an ended run changes nothing
    assert run.get_status() == "Canceled"


def test_cancel_while_queued(tmp_path: Path) -> None:
    slow = standin.StandinSettings(registry=tmp_path / "registry", queue_delay=30)
    run = _submit(tmp_path, "touch ran", settings=slow)
    run.cancel()
    assert _statuses_until_end(run, timeout=10)[-1] == "Canceled"
    assert not (slow.registry / "run-1" / "wd" / "ran").exists()


def test_any_replica_can_answer_for_a_run_and_ids_are_unique(
        tmp_path: Path, settings: standin.StandinSettings) -> None:
    run = _submit(tmp_path, "sleep 0.2", settings=settings, run_id="shared-run")
    other_replica = standin.Workspace("s", "r", "ws", settings=settings)  # a new process would do the same
    found = standin.Run.get(other_replica, "shared-run")
    assert found.id == run.id and found.experiment.name == "tunebus-e1"
    assert _statuses_until_end(found)[-1] == "Completed"
    with pytest.raises(standin.RunNotFound):
        standin.Run.get(other_replica, "no-such-run")
    with pytest.raises(standin.RunAlreadyExists) as caught:
        _submit(tmp_path, "true", settings=settings, run_id="shared-run")
    assert caught.value.status_code == 409


def test_a_run_whose_runner_died_is_not_responding(tmp_path: Path, settings: standin.StandinSettings) -> None:
    run = _submit(tmp_path, "sleep 60", settings=settings)
    deadline = time.monotonic() + 10
    while run.get_status() != "Running" and time.monotonic() < deadline:
        time.sleep(0.02)
    state = standin._read_json(settings.registry / "run-1" / "state.json")
    os.kill(state["runner_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while run.get_status() != "NotResponding" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run.get_status() == "NotResponding"


def test_submission_latency_blocks_the_caller(tmp_path: Path) -> None:
    slow = standin.StandinSettings(registry=tmp_path / "registry", submit_latency=0.5)
    started = time.monotonic()
    run = _submit(tmp_path, "true", settings=slow)
    assert time.monotonic() - started >= 0.5
    assert _statuses_until_end(run)[-1] == "Completed"
