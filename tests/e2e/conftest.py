"""A whole tunebus stack per test: the four services as real processes on a private vhost and
blob container of the session's RabbitMQ and Azurite."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from shared.bus import Bus
from shared.health import is_healthy
from shared.messages import Message
from shared.records import read_full_state
from shared.state import ExperimentState
from shared.storage import BlobStore, parse_connection_string
from tests.conftest import REPO_ROOT, Infra, _create_container

SERVICES = ("tuner", "dispatcher", "aml_submitter", "metric_ingestor")
VENV_BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """Running services; start, kill and restart them by name."""

    env: dict[str, str]
    run_dir: Path
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    service_urls: dict[str, str] = field(default_factory=dict)  # each service's own broker login

    def start(self, service: str, replicas: int = 1, **extra_env: str) -> None:
        for _ in range(replicas):
            index = len(self.procs.setdefault(service, []))
            name = f"{service}-{index}"
            health = self.run_dir / f"{name}.health"
            env = {**self.env, "TUNEBUS_HEALTH_FILE": str(health), **extra_env}
            if service in self.service_urls and "TUNEBUS_AMQP_URL" not in extra_env:
                env["TUNEBUS_AMQP_URL"] = self.service_urls[service]
            log = (self.run_dir / f"{name}.log").open("ab")
            proc = subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=env, cwd=REPO_ROOT,
                                    stdout=log, stderr=subprocess.STDOUT)
            self.procs[service].append(proc)
            self._wait_healthy(name, health, proc)

    def _wait_healthy(self, name: str, health: Path, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)[-3000:]}")
            if is_healthy(health):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} not healthy after 60 s:\n{self.log(name)[-3000:]}")

    def kill(self, service: str, index: int = 0, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[service][index]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.run_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.run_dir.glob("*.log")))

    def stop_all(self) -> None:
        for procs in self.procs.values():
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        for procs in self.procs.values():
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run the ``tunebus`` CLI against this stack."""
        return subprocess.run([str(VENV_BIN / "tunebus"), *args], env=self.env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def create(self, config: Path, *extra: str, timeout: float = 180) -> dict[str, object]:
        """``tunebus create --config CONFIG --wait --json``; the summary object it prints last."""
        result = self.cli("create", "--config", str(config), "--wait", "--json", *extra, timeout=timeout)
        lines = result.stdout.strip().splitlines()
        if result.returncode not in (0, 1) or not lines:
            raise AssertionError(f"create failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                                 f"{self.logs()}")
        summary = dict(json.loads(lines[-1]))
        # The README's exit codes: 1 when the experiment ended in ERROR, 0 for any other end.
        expected = 1 if summary.get("status") == "ERROR" else 0
        assert result.returncode == expected, f"exit {result.returncode} for {summary}:\n{result.stderr}"
        return summary


def shared_storage_endpoint(infra: Infra) -> str:
    """``TUNEBUS_SHARED_STORAGE_ENDPOINT`` for the test Azurite: its URL, ``{account}`` for the name."""
    fields = parse_connection_string(infra.storage_connection_string)
    return fields["BlobEndpoint"].rstrip("/").replace(f"/{fields['AccountName']}", "/{account}")


@dataclass(frozen=True)
class SharedStorage:
    """An AzureBlob ``sharedStorage`` for an experiment: Azurite's account, a container of its own."""

    account: str
    key: str
    container: str

    def config(self) -> dict[str, str]:
        """The experiment file's ``sharedStorage`` section."""
        return {"storageType": "AzureBlob", "storageAccountName": self.account,
                "containerName": self.container, "storageAccountKey": self.key,
                "localMountPoint": "/mnt/shared", "remoteMountPoint": "/shared", "localMounted": "usermount"}


@pytest.fixture
def shared_storage(infra: Infra) -> Iterator[SharedStorage]:
    """A second blob container (not the deployment's) for an experiment's sharedStorage."""
    from azure.storage.blob import BlobServiceClient

    fields = parse_connection_string(infra.storage_connection_string)
    name = f"shared-{uuid.uuid4().hex[:16]}"
    _create_container(infra.storage_connection_string, name)
    yield SharedStorage(fields["AccountName"], fields["AccountKey"], name)
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        service.delete_container(name)


@pytest.fixture
def trial_work_dir() -> Iterator[Path]:
    """The submitters' work folder, where trials can reach it: a root submitter runs them as the
    unprivileged trial user, and pytest's own tmp folders are private to root."""
    folder = Path(tempfile.mkdtemp(prefix="tunebus-e2e-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def stack(infra: Infra, amqp_vhost: str, fresh_container: str, tmp_path: Path,
          trial_work_dir: Path) -> Iterator[Stack]:
    """The four services, one replica each, isolated on their own vhost and container."""
    env = infra.env(
        TUNEBUS_AMQP_URL=amqp_vhost,
        TUNEBUS_STORAGE_CONTAINER=fresh_container,
        TUNEBUS_SHARED_STORAGE_ENDPOINT=shared_storage_endpoint(infra),  # sharedStorage on Azurite
        TUNEBUS_WORK_DIR=str(trial_work_dir / "work"),
        TUNEBUS_LOG_LEVEL="INFO",
        # Short enough that a test sees a lost trial retried within seconds.
        TUNEBUS_HEARTBEAT_SECONDS="1",
        TUNEBUS_HEARTBEAT_TIMEOUT="6",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stack = Stack(env, run_dir, service_urls=_service_logins(infra, amqp_vhost, tmp_path))
    try:
        for service in SERVICES:
            stack.start(service)
        yield stack
    finally:
        stack.stop_all()


#: Each service's own broker account (shared/broker_users.py), as deploy/local and compose run it.
SERVICE_BROKER_USERS = {"tuner": "tunebus-tuner", "dispatcher": "tunebus-dispatcher",
                        "aml_submitter": "tunebus-submitter", "metric_ingestor": "tunebus-ingestor"}


def _service_logins(infra: Infra, amqp_vhost: str, tmp_path: Path) -> dict[str, str]:
    """Each service's AMQP URL on the test's vhost as its own broker user, with that user's
    rights granted there (one import_definitions), so that e2e tests run with the permissions a
    deployment has: a publish a service may not make fails here as it would there. Empty where
    the infrastructure has no per-service users (docker or external: the admin URL is used)."""
    if infra.credentials_dir is None or infra.rabbitmqctl is None:
        return {}
    from shared.broker_users import definitions

    vhost = unquote(urlsplit(amqp_vhost).path.lstrip("/"))
    doc = definitions(infra.credentials_dir, vhost=vhost)
    path = tmp_path / "broker-definitions.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o644)  # rabbitmqctl may run as the broker's own user
    infra.rabbitmqctl("import_definitions", str(path))
    parts = urlsplit(amqp_vhost)
    host = f"{parts.hostname}:{parts.port}"
    urls = {}
    for service, user in SERVICE_BROKER_USERS.items():
        password = (infra.credentials_dir / f"amqp-{user}").read_text().strip()
        urls[service] = f"amqp://{user}:{quote(password, safe='')}@{host}{parts.path}"
    return urls


def write_experiment(tmp_path: Path, trial_code: str, **overrides: object) -> Path:
    """An NNI config + trial in ``tmp_path/exp``: a 2-parameter space, the given trial script."""
    import yaml

    exp = tmp_path / "exp"
    exp.mkdir(exist_ok=True)
    (exp / "trial.py").write_text(trial_code)
    (exp / "search_space.json").write_text(json.dumps({
        "x": {"_type": "uniform", "_value": [0, 1]},
        "y": {"_type": "choice", "_value": [1, 2, 3]},
    }))
    config: dict[str, object] = {
        "experimentName": "e2e",
        "searchSpaceFile": "search_space.json",
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": ".",
        "trialConcurrency": 2,
        "maxTrialNumber": 6,
        "maxExperimentDuration": "5m",
        "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
    }
    config.update(overrides)
    path = exp / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def publish(stack: Stack, msg: Message) -> None:
    """Publish a message on the stack's broker as any program would."""
    bus = Bus(stack.env["TUNEBUS_AMQP_URL"], service="test")
    await bus.connect()
    try:
        await bus.publish(msg)
    finally:
        await bus.close()


async def read_state(stack: Stack, experiment_id: str) -> ExperimentState | None:
    async with BlobStore(stack.env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                         stack.env["TUNEBUS_STORAGE_CONTAINER"]) as store:
        return await read_full_state(store, experiment_id)  # every trial, the ended log's too


async def wait_until(stack: Stack, experiment_id: str, done: object, timeout: float = 90) -> ExperimentState:
    """Poll the experiment's state until ``done(state)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await read_state(stack, experiment_id)
        if state is not None and done(state):  # type: ignore[operator]
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"experiment {experiment_id}: condition not met in {timeout} s:\n{stack.logs()}")


async def wait_finished(stack: Stack, experiment_id: str, timeout: float = 90) -> ExperimentState:
    return await wait_until(stack, experiment_id, lambda s: s.finished, timeout)
