"""`docker compose up`, for real: the project's image and compose file built, started, scaled,
killed, taken down and up again, with experiments run from the host's CLI throughout.

The tests run in file order against one stack (tests/compose/conftest.py) and each leaves it
as the next expects; ``make compose-test`` runs them. Nothing here is a stand-in for tunebus:
only the base images may be (deploy/images/build-standins.sh), and the AML backend in the last
experiment (``TUNEBUS_AML_STANDIN=1``, NOT Azure ML).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.messages import TrialStatus
from shared.records import read_full_state
from shared.state import ExperimentState
from shared.storage import BlobStore
from tests.compose.conftest import IMAGE, TUNEBUS_SERVICES, Compose
from tests.conftest import REPO_ROOT

TUNEBUS_CLI = Path(sys.executable).parent / "tunebus"
DIGITS = REPO_ROOT / "examples" / "sklearn-digits"
SUBMITTERS = 4
#: A trial that takes a while, so that kills land while trials run; reports 3 results.
SLOW_TRIAL = """import time, nni
p = nni.get_next_parameter()
for step in range(3):
    time.sleep({pause})
    nni.report_intermediate_result(p["x"] * step)
nni.report_final_result(p["x"])
"""
#: Counts what a local trial inside the submitter's container must not reach; reports the count.
PROBE_TRIAL = """import os, nni
nni.get_next_parameter()
reached = int(os.getuid() in (0, 10001))  # root, or the services' own user
for path in ("/credentials/amqp-tunebus-submitter", "/credentials/amqp-tunebus-admin", "/proc/1/environ"):
    try:
        open(path, "rb").read()
        reached += 1
    except OSError:
        pass
nni.report_final_result(reached)
"""
#: A custom tuner (NNI's API) that says who its worker runs as and whether it can read the
#: tuner's broker password.
PROBE_TUNER = """import os
from nni.tuner import Tuner


class ProbeTuner(Tuner):
    def update_search_space(self, search_space):
        pass

    def generate_parameters(self, parameter_id, **kwargs):
        uid = os.getuid()
        runs_as = "root" if uid == 0 else "service-user" if uid == 10001 else "trial-user"
        readable = os.access("/credentials/amqp-tunebus-tuner", os.R_OK)
        return {"runs_as": runs_as, "tuner_login": "readable" if readable else "unreadable"}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        pass
"""
AML_TRAINING_SERVICE = {
    "platform": "aml", "subscriptionId": "00000000-1111-2222-3333-444444444444",
    "resourceGroup": "tunebus-rg", "workspaceName": "tunebus-ws", "computeTarget": "cpu-cluster",
    "dockerImage": "msranni/nni",
}


# --- helpers ---------------------------------------------------------------------------------


def _cli(stack: Compose, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TUNEBUS_CLI), *args], env=stack.cli_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _create(stack: Compose, config: Path, *extra: str, timeout: float = 300) -> dict[str, Any]:
    """``tunebus create --config CONFIG --wait --json`` from the host; its summary."""
    result = _cli(stack, "create", "--config", str(config), "--wait", "--json", *extra, timeout=timeout)
    lines = result.stdout.strip().splitlines()
    if result.returncode not in (0, 1) or not lines:
        raise AssertionError(f"create failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                             f"{stack.logs()[-8000:]}")
    return dict(json.loads(lines[-1]))


def _experiment(folder: Path, trial: str, **config: Any) -> Path:
    """An NNI v2 experiment in ``folder``: one uniform parameter ``x``, the given trial script."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.py").write_text(trial)
    (folder / "search_space.json").write_text('{"x": {"_type": "uniform", "_value": [0, 1]}}')
    full = {"experimentName": folder.name, "searchSpaceFile": "search_space.json",
            "trialCommand": "python3 trial.py", "trialCodeDirectory": ".", "maxExperimentDuration": "10m",
            "tuner": {"name": "Random"}, "trainingService": {"platform": "local"}, **config}
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path


async def _read_state(stack: Compose, experiment_id: str) -> ExperimentState | None:
    env = stack.cli_env()
    async with BlobStore(env["TUNEBUS_STORAGE_CONNECTION_STRING"], env["TUNEBUS_STORAGE_CONTAINER"]) as store:
        return await read_full_state(store, experiment_id)  # every trial, the ended log's too


async def _claiming_replicas(stack: Compose, experiment_id: str) -> set[str]:
    """The submitter replicas that claimed the experiment's trials (``<hostname>-<pid>-<id>``)."""
    env = stack.cli_env()
    async with BlobStore(env["TUNEBUS_STORAGE_CONNECTION_STRING"], env["TUNEBUS_STORAGE_CONTAINER"]) as store:
        names = [n for n in await store.list(f"experiments/{experiment_id}/trials/") if "/claims/" in n]
        claims = [await store.read_json(name) for name in names]
    return {doc["replica"] for doc, _ in filter(None, claims)}


def _running_trials(stack: Compose, experiment_id: str) -> int:
    state = asyncio.run(_read_state(stack, experiment_id))
    return 0 if state is None else sum(t.status == TrialStatus.RUNNING for t in state.trials.values())


def _wait_for(what: str, condition: Any, timeout: float, pause: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(pause)
    raise AssertionError(f"{what}: not within {timeout} s")


def _kill_main_process(stack: Compose, container: str) -> int:
    """SIGKILL the container's main process from the host, as a crash or the OOM killer would;
    returns its restart count before. (`docker kill` counts as a manual stop: Docker applies no
    restart policy after it, so it cannot show that the policy works.)"""
    state = stack.inspect(container)
    before, pid = int(state["RestartCount"]), int(state["State"]["Pid"])
    assert pid > 0, f"{container} is not running"
    os.kill(pid, signal.SIGKILL)
    return before


def _restarted(stack: Compose, container: str, before: int) -> bool:
    state = stack.inspect(container)
    return int(state["RestartCount"]) > before and bool(state["State"]["Running"])


def _kill_each_container(stack: Compose, experiment_id: str) -> list[str]:
    """Each tunebus container in turn, while the experiment runs: killed, then restarted by Docker."""
    killed = []
    for service in TUNEBUS_SERVICES:
        for container in stack.containers(service):
            state = asyncio.run(_read_state(stack, experiment_id))
            assert state is not None and not state.finished, f"the experiment ended before {service}'s kill"
            before = _kill_main_process(stack, container)
            _wait_for(f"{service} {container[:12]} restarted",
                      lambda c=container, b=before: _restarted(stack, c, b), 60)
            killed.append(f"{service}:{container[:12]}")
    return killed


# --- the tests, in the order they run --------------------------------------------------------


def test_image_runs_as_non_root_without_test_dependencies_with_the_trials_packages(stack: Compose) -> None:
    dev_packages = ("pytest", "mypy", "ruff", "testcontainers")
    probe = ("import importlib.util as u, os; "
             f"print(os.getuid(), [m for m in {dev_packages!r} if u.find_spec(m)], "
             "u.find_spec('sklearn') is not None)")
    result = subprocess.run(["docker", "run", "--rm", IMAGE, "python", "-c", probe],
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split(maxsplit=1)[0] == "10001", result.stdout
    assert "[]" in result.stdout, f"test/dev packages in the image: {result.stdout}"
    assert result.stdout.strip().endswith("True"), "TRIAL_REQUIREMENTS (scikit-learn) missing"
    for container in stack.containers("dispatcher") + stack.containers("metric-ingestor"):
        assert stack.inspect(container)["Config"]["User"] == "tunebus"
    # The submitter and the tuner start as root only to run the user's code (local trials,
    # custom algorithms' workers) as tunebus-trial (the next tests).
    for container in stack.containers("aml-submitter") + stack.containers("tuner"):
        assert stack.inspect(container)["Config"]["User"] == "root"


def _management(stack: Compose, path: str, user: str, password: str) -> tuple[int, Any]:
    """GET the broker's management API (published on 127.0.0.1) as ``user``: status, JSON body."""
    request = urllib.request.Request(f"http://127.0.0.1:{stack.management_port}{path}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_each_service_has_its_own_broker_login_and_guest_none(stack: Compose) -> None:
    admin = urlsplit(stack.compose_env("--admin")["TUNEBUS_AMQP_URL"])
    assert admin.username == "tunebus-admin" and admin.password
    assert _management(stack, "/api/whoami", "guest", "guest")[0] == 401
    assert _management(stack, "/api/whoami", "tunebus-admin", "not-the-password")[0] == 401
    status, users = _management(stack, "/api/users", admin.username, admin.password)
    assert status == 200 and "guest" not in {u["name"] for u in users}, users
    status, connections = _management(stack, "/api/connections", admin.username, admin.password)
    assert status == 200
    service_users = {"tunebus-tuner", "tunebus-dispatcher", "tunebus-ingestor", "tunebus-submitter",
                     "tunebus-dashboard"}
    assert {c["user"] for c in connections} == service_users, connections
    # The host CLI's login publishes commands and nothing it should not: a service's account is
    # refused its password (each service has its own, from the credentials volume).
    cli = urlsplit(stack.cli_env()["TUNEBUS_AMQP_URL"])
    assert cli.username == "tunebus-cli"
    assert _management(stack, "/api/whoami", "tunebus-dispatcher", str(cli.password))[0] == 401
    # Each service's container holds its own password and no other.
    for service, user in (("tuner", "tunebus-tuner"), ("dispatcher", "tunebus-dispatcher"),
                          ("metric-ingestor", "tunebus-ingestor"), ("aml-submitter", "tunebus-submitter"),
                          ("dashboard", "tunebus-dashboard")):
        listed = stack.run("exec", "-T", service, "ls", "-A", "/credentials", timeout=60).stdout.split()
        assert listed == [f"amqp-{user}"], (service, listed)
    # No password is in any container's configuration (docker inspect).
    for container in stack.containers():
        config = json.dumps(stack.inspect(container)["Config"])
        assert admin.password not in config and str(cli.password) not in config


def test_a_local_trial_reads_no_credentials_and_runs_as_its_own_user(stack: Compose, tmp_path: Path) -> None:
    config = _experiment(tmp_path / "probe", PROBE_TRIAL, maxTrialNumber=1, trialConcurrency=1)
    summary = _create(stack, config)
    assert summary["status"] == "DONE", (summary, stack.logs("aml-submitter")[-6000:])
    state = asyncio.run(_read_state(stack, str(summary["id"])))
    assert state is not None
    [trial] = state.trials.values()
    assert trial.status == TrialStatus.SUCCEEDED, trial.error
    assert trial.final_value == 0, "the trial read a credential or ran as a service's user (see PROBE_TRIAL)"


def test_sklearn_digits_example_runs_to_done_inside_the_submitter(stack: Compose, tmp_path: Path) -> None:
    with stack.steps.step("sklearn-digits example from the host CLI to DONE"):
        example = tmp_path / "sklearn-digits"
        shutil.copytree(DIGITS, example)
        config = yaml.safe_load((example / "config.yml").read_text())
        summary = _create(stack, example / "config.yml", timeout=600)
    assert summary["status"] == "DONE", (summary, stack.logs("aml-submitter")[-6000:])
    assert summary["trials"] == {"SUCCEEDED": config["maxTrialNumber"]}
    assert 0.5 < summary["best"]["value"] <= 1.0  # an SVC's accuracy on the digits


def test_a_custom_tuner_runs_from_stored_code_as_the_trial_user(stack: Compose, tmp_path: Path) -> None:
    """A custom NNI-style tuner whose code exists only on the host: the tuner's container gets it
    from storage and runs it in a worker as tunebus-trial, which cannot read the tuner's password."""
    folder = tmp_path / "custom"
    (folder / "algorithms").mkdir(parents=True)
    (folder / "algorithms" / "probe.py").write_text(PROBE_TUNER)
    config = _experiment(folder, "import nni\nnni.get_next_parameter()\nnni.report_final_result(1.0)\n",
                         maxTrialNumber=1, trialConcurrency=1,
                         tuner={"className": "probe.ProbeTuner", "codeDirectory": "algorithms"})
    (folder / "search_space.json").write_text(json.dumps({
        "runs_as": {"_type": "choice", "_value": ["trial-user", "service-user", "root"]},
        "tuner_login": {"_type": "choice", "_value": ["unreadable", "readable"]}}))
    summary = _create(stack, config)
    assert summary["status"] == "DONE", (summary, stack.logs("tuner")[-6000:])
    # (Not named "password": the CLI masks the values of secret-named keys.)
    assert summary["best"]["parameters"] == {"runs_as": "trial-user", "tuner_login": "unreadable"}, summary


def test_scaled_submitters_all_run_trials(stack: Compose, tmp_path: Path) -> None:
    with stack.steps.step(f"--scale aml-submitter={SUBMITTERS}, all healthy"):
        stack.run("up", "-d", "--no-build", "--scale", f"aml-submitter={SUBMITTERS}")
        stack.wait_healthy(expected=2 + len(TUNEBUS_SERVICES) - 1 + SUBMITTERS)
    submitters = stack.containers("aml-submitter")
    assert len(submitters) == SUBMITTERS
    hostnames = {str(stack.inspect(c)["Config"]["Hostname"]) for c in submitters}

    with stack.steps.step(f"an experiment's trials on {SUBMITTERS} replicas"):
        config = _experiment(tmp_path / "scaled", SLOW_TRIAL.format(pause=0.3),
                             maxTrialNumber=16, trialConcurrency=8)
        summary = _create(stack, config)
    assert summary["status"] == "DONE", summary
    assert summary["trials"] == {"SUCCEEDED": 16}
    replicas = asyncio.run(_claiming_replicas(stack, str(summary["id"])))
    assert {replica.split("-")[0] for replica in replicas} == hostnames, (replicas, hostnames)


def test_killed_containers_restart_and_the_experiment_completes(stack: Compose, tmp_path: Path) -> None:
    experiment_id = f"kills-{os.getpid()}"
    config = _experiment(tmp_path / experiment_id, SLOW_TRIAL.format(pause=1.0), maxTrialNumber=16,
                         trialConcurrency=4)
    summaries: list[dict[str, Any]] = []
    create = threading.Thread(target=lambda: summaries.append(
        _create(stack, config, "--id", experiment_id, timeout=600)))
    with stack.steps.step("SIGKILL each tunebus container mid-experiment, each restarted by its policy"):
        create.start()
        _wait_for("a trial running", lambda: _running_trials(stack, experiment_id), 120)
        killed = _kill_each_container(stack, experiment_id)
        print(f"[compose-test] killed and restarted: {', '.join(killed)}", flush=True)
    with stack.steps.step("the experiment to DONE after the kills"):
        create.join(timeout=600)
    assert summaries, "tunebus create --wait did not return"
    summary = summaries[0]
    assert summary["status"] == "DONE", (summary, stack.logs()[-8000:])
    assert summary["trials"] == {"SUCCEEDED": 16}, summary
    state = asyncio.run(_read_state(stack, experiment_id))
    assert state is not None and len(state.trials) == 16  # exactly maxTrialNumber, none twice
    assert len(killed) == len(TUNEBUS_SERVICES) - 1 + SUBMITTERS
    stack.wait_healthy(expected=2 + len(TUNEBUS_SERVICES) - 1 + SUBMITTERS)


def test_down_and_up_keep_experiments_and_aml_runs_on_the_standin(stack: Compose, tmp_path: Path) -> None:
    before = json.loads(_cli(stack, "experiment", "list", "--json").stdout)
    assert len(before) >= 3
    with stack.steps.step("down (volumes kept), up -d with TUNEBUS_AML_STANDIN=1, all healthy"):
        stack.run("down", "--timeout", "20")
        assert stack.containers() == []
        stack.extra_env["TUNEBUS_AML_STANDIN"] = "1"
        stack.run("up", "-d", "--no-build")
        stack.wait_healthy(expected=2 + len(TUNEBUS_SERVICES))
    after = json.loads(_cli(stack, "experiment", "list", "--json").stdout)
    assert {(e["id"], e["status"]) for e in after} == {(e["id"], e["status"]) for e in before}

    with stack.steps.step("platform: aml on the stand-in (NOT Azure ML) to DONE"):
        config = _experiment(tmp_path / "aml", SLOW_TRIAL.format(pause=0.2), maxTrialNumber=3,
                             trialConcurrency=2, trainingService=AML_TRAINING_SERVICE)
        summary = _create(stack, config)
    assert summary["status"] == "DONE", (summary, stack.logs("aml-submitter")[-6000:])
    assert summary["trials"] == {"SUCCEEDED": 3}
    state = asyncio.run(_read_state(stack, str(summary["id"])))
    assert state is not None
    assert all(t.job_url and t.job_url.startswith("standin://") for t in state.trials.values())
    assert "NOT on Azure ML" in stack.logs("aml-submitter")


def _health_probe(stack: Compose) -> int:
    """The services' healthcheck command, run in the tuner's container now: its exit status."""
    return stack.run("exec", "-T", "tuner", "python", "-m", "shared.health", "/tmp/health",
                     check=False, timeout=60).returncode


def test_healthcheck_fails_while_storage_is_down_and_recovers(stack: Compose) -> None:
    assert _health_probe(stack) == 0
    with stack.steps.step("healthcheck with Azurite stopped, then started again"):
        stack.run("stop", "azurite")
        try:
            _wait_for("the tuner's healthcheck failing", lambda: _health_probe(stack) == 1, 90, pause=2)
        finally:
            stack.run("start", "azurite")
        _wait_for("the tuner's healthcheck passing again", lambda: _health_probe(stack) == 0, 90, pause=2)
    assert "unhealthy (health file not touched): storage" in stack.logs("tuner")


@pytest.fixture(autouse=True, scope="module")
def _stack_is_up(stack: Compose) -> None:
    """Every test here needs the stack (built and healthy) first."""
