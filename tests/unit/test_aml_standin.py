"""The AML stand-in (NOT Azure): takes the real ScriptRunConfig, runs it locally, walks AML's statuses."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aml_standin import v1 as standin
from aml_standin.runner import read_json
from services.aml_submitter.aml.job import AmlTarget, build_script_run_config, build_snapshot
from services.aml_submitter.backend import JobRequest
from services.aml_submitter.trial_env import TrialIdentity

pytest.importorskip("azureml.core", reason="azureml-core (the aml extra) is not installed")

TERMINAL = {"Completed", "Failed", "Canceled"}


def _config(command: str, image: str = "msranni/nni") -> dict[str, Any]:
    return {
        "trialCommand": command,
        "trialConcurrency": 1,
        "trainingService": {"platform": "aml", "subscriptionId": "s", "resourceGroup": "r",
                            "workspaceName": "ws", "computeTarget": "cpu-cluster", "dockerImage": image},
    }


def _submit(tmp_path: Path, command: str, *, settings: standin.StandinSettings,
            run_id: str = "run-1", code: dict[str, str] | None = None,
            image: str = "msranni/nni") -> standin.Run:
    code_dir = None
    if code:
        code_dir = tmp_path / "code"
        code_dir.mkdir(exist_ok=True)
        for name, text in code.items():
            (code_dir / name).write_text(text)
    job = JobRequest(TrialIdentity("e1", "t1", 3), {"x": 2}, _config(command, image), code_dir,
                     "http://127.0.0.1:1/devstoreaccount1/c?sig=x")
    snapshot = build_snapshot(job, tmp_path / f"snap-{run_id}")
    config = build_script_run_config(job, AmlTarget.from_config(job.config), snapshot,
                                     SimpleNamespace(name="cpu-cluster"))
    workspace = standin.Workspace("s", "r", "ws", settings=settings)
    compute = standin.ComputeTarget(workspace, "cpu-cluster")
    assert compute.name == "cpu-cluster"
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
             "    'service_settings': [k for k in os.environ if k.startswith('TUNEBUS_STORAGE')],\n"
             "    'host_only': os.environ.get('HOST_ONLY_VARIABLE'), 'cwd': os.getcwd()}))\n")
    os.environ["TUNEBUS_STORAGE_CONNECTION_STRING"] = "AccountKey=must-not-reach-the-trial"
    os.environ["HOST_ONLY_VARIABLE"] = "the host's"
    try:
        run = _submit(tmp_path, "python3 trial.py", settings=settings, code={"trial.py": trial})
    finally:
        del os.environ["TUNEBUS_STORAGE_CONNECTION_STRING"], os.environ["HOST_ONLY_VARIABLE"]
    seen = _statuses_until_end(run)
    assert seen[-1] == "Completed", run.get_details()
    order = ["NotStarted", "Starting", "Preparing", "Queued", "Running", "Finalizing", "Completed"]
    assert [s for s in order if s in seen] == seen  # in AML's order, none invented
    assert {"Queued", "Preparing", "Running", "Completed"} <= set(seen)  # the delays make these visible
    import json

    out = json.loads((settings.registry / "run-1" / "wd" / "out.json").read_text())
    assert out == {"p": {"x": 2}, "platform": "aml", "service_settings": [], "host_only": None,
                   "cwd": str(settings.registry / "run-1" / "wd")}
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
    with pytest.raises(standin.RunNotFound) as missing:
        standin.Run.get(other_replica, "no-such-run")
    assert missing.value.status_code == 404  # as the SDK's ServiceException
    with pytest.raises(standin.RunAlreadyExists) as caught:
        _submit(tmp_path, "true", settings=settings, run_id="shared-run")
    assert not hasattr(caught.value, "status_code")  # as the SDK's ExperimentExecutionException:
    assert json.loads(str(caught.value))["status_code"] == 409  # the status is in the message only


def test_a_run_whose_runner_died_is_not_responding(tmp_path: Path, settings: standin.StandinSettings) -> None:
    run = _submit(tmp_path, "sleep 60", settings=settings)
    deadline = time.monotonic() + 10
    while run.get_status() != "Running" and time.monotonic() < deadline:
        time.sleep(0.02)
    state = read_json(settings.registry / "run-1" / "state.json")
    os.kill(state["runner_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while run.get_status() != "NotResponding" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run.get_status() == "NotResponding"


def test_submission_latency_blocks_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = standin.StandinSettings(registry=tmp_path / "registry", submit_latency=60)
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # recorded and cut short, so the minute is not spent
        slept.append(seconds)
        real_sleep(min(seconds, 0.05))

    monkeypatch.setattr(standin.time, "sleep", sleep)
    run = _submit(tmp_path, "true", settings=slow)
    # The call itself slept what was left of the minute after its own work (well under 10 s).
    assert any(50 < seconds <= 60 for seconds in slept), slept
    assert _statuses_until_end(run)[-1] == "Completed"


def test_an_unknown_compute_is_refused_as_the_sdk_does(settings: standin.StandinSettings) -> None:
    workspace = standin.Workspace("s", "r", "ws", settings=settings)
    with pytest.raises(standin.ComputeTargetException, match=r"ComputeTargetNotFound: .*gpu-big"):
        standin.ComputeTarget(workspace, "gpu-big")


def test_an_unknown_image_fails_the_run_at_preparing(tmp_path: Path,
                                                      settings: standin.StandinSettings) -> None:
    run = _submit(tmp_path, "touch ran", settings=settings, image="myregistry.azurecr.io/private:1")
    seen = _statuses_until_end(run)
    assert seen[-1] == "Failed" and "Running" not in seen
    assert "ImagePullFailed" in run.get_details()["error"]["error"]["message"]
    assert not (settings.registry / "run-1" / "wd" / "ran").exists()


def test_the_snapshot_follows_links_and_drops_modes(tmp_path: Path,
                                                    settings: standin.StandinSettings) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("linked content")
    code = {"tool.sh": "echo hi"}
    run_id = "run-modes"
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "tool.sh").write_text(code["tool.sh"])
    (code_dir / "tool.sh").chmod(0o755)
    (code_dir / "link.txt").symlink_to(outside)
    # './tool.sh' would fail on AML (no executable bit in a snapshot): 'bash tool.sh' works.
    run = _submit(tmp_path, "test ! -x tool.sh && bash tool.sh > out.txt && test ! -L link.txt",
                  settings=settings, run_id=run_id, code={"tool.sh": "echo hi"})
    assert _statuses_until_end(run)[-1] == "Completed", run.get_details()
    wd = settings.registry / run_id / "wd"
    assert (wd / "out.txt").read_text() == "hi\n"


def test_snapshots_over_the_sdks_file_limit_are_refused(tmp_path: Path,
                                                         settings: standin.StandinSettings) -> None:
    source = tmp_path / "big"
    source.mkdir()
    for i in range(standin.SNAPSHOT_MAX_FILES + 1):
        (source / f"f{i}").write_text("")
    run_config = SimpleNamespace(target="cpu-cluster", environment_variables={},
                                 max_run_duration_seconds=None,
                                 environment=SimpleNamespace(docker=SimpleNamespace(base_image="msranni/nni")))
    config = SimpleNamespace(source_directory=str(source), command="true", run_config=run_config)
    workspace = standin.Workspace("s", "r", "ws", settings=settings)
    with pytest.raises(standin.SnapshotException, match="file limit of 2000"):
        standin.Experiment(workspace, "tunebus-e1").submit(config, run_id="too-big")
    assert not (settings.registry / "too-big").exists()


def test_injected_faults_happen_once_each_and_in_the_sdks_shapes(
        tmp_path: Path, settings: standin.StandinSettings) -> None:
    standin.inject_fault(settings.registry, "submit", 429)
    with pytest.raises(standin.ExperimentExecutionException) as throttled:
        _submit(tmp_path, "true", settings=settings)
    assert json.loads(str(throttled.value))["status_code"] == 429
    assert not (settings.registry / "run-1").exists()  # before the run exists
    standin.inject_fault(settings.registry, "tags", 503)
    with pytest.raises(standin.ServiceException):
        _submit(tmp_path, "sleep 30", settings=settings)
    workspace = standin.Workspace("s", "r", "ws", settings=settings)
    run = standin.Run.get(workspace, "run-1")  # the run exists, without its tags
    assert run.get_tags() == {}
    standin.inject_fault(settings.registry, "cancel", times=1)
    run.cancel()  # silently does nothing
    time.sleep(0.3)
    assert run.get_status() not in ("CancelRequested", "Canceled")
    run.cancel()
    assert _statuses_until_end(run, timeout=10)[-1] == "Canceled"
