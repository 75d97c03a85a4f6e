"""The real stack in Docker for tests/compose: engine, base images, the project's image, `up -d`.

Everything here is what the README's Deployment section tells a user to run: the project's
deploy/Dockerfile and docker-compose.yml, built and started with `docker compose` (v2, or
Debian's docker-compose 1.29 where the plugin cannot be had). What differs: a project name and
host ports of its own, so that a run never touches a user's stack, and `down -v` at the end.
Each step prints its duration; the module's end prints them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import AZURITE_KEY, REPO_ROOT

ENGINE = REPO_ROOT / "deploy" / "images" / "docker-engine.sh"
STANDINS = REPO_ROOT / "deploy" / "images" / "build-standins.sh"
COMPOSE_ENV = REPO_ROOT / "deploy" / "compose-env"
IMAGE = "tunebus:dev"
#: What the trials of the test's experiments import (the sklearn-digits example's).
TRIAL_REQUIREMENTS = "scikit-learn>=1.4"
TUNEBUS_SERVICES = ("tuner", "dispatcher", "metric-ingestor", "dashboard", "aml-submitter")


@dataclass
class Steps:
    """Named steps and how long each took, printed as they end and all together at the end."""

    done: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"\n[compose-test] {name} ...", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.done.append((name, took))
            print(f"[compose-test] {name}: {took:.1f} s", flush=True)

    def summary(self) -> str:
        width = max((len(name) for name, _ in self.done), default=0)
        lines = [f"  {name:<{width}}  {took:7.1f} s" for name, took in self.done]
        total = sum(took for _, took in self.done)
        return "\n".join(["[compose-test] step timings:", *lines, f"  {'total':<{width}}  {total:7.1f} s"])


def _run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _free_port() -> int:
    for _ in range(200):
        port = random.randint(30000, 39999)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 30000-39999")


@dataclass
class Compose:
    """One compose project of docker-compose.yml, and the host CLI's view of it."""

    command: list[str]
    project: str
    amqp_port: int
    blob_port: int
    management_port: int
    steps: Steps
    extra_env: dict[str, str] = field(default_factory=dict)
    _logins: dict[str, dict[str, str]] = field(default_factory=dict)  # compose_env's, once each

    @property
    def env(self) -> dict[str, str]:
        """The environment compose runs in: ports, the trials' packages, stand-in switches."""
        return {**os.environ, "COMPOSE_PROJECT_NAME": self.project,
                "TUNEBUS_AMQP_PORT": str(self.amqp_port), "TUNEBUS_BLOB_PORT": str(self.blob_port),
                "TUNEBUS_MANAGEMENT_PORT": str(self.management_port),
                "TUNEBUS_TRIAL_REQUIREMENTS": TRIAL_REQUIREMENTS, **self.extra_env}

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self.command, "-f", str(REPO_ROOT / "docker-compose.yml"), *args],
                    env=self.env, timeout=timeout, check=check)

    def cli_env(self) -> dict[str, str]:
        """How the CLI on the host reaches the stack: what ``deploy/compose-env`` prints (its
        broker login from the stack's credentials volume; the published loopback ports)."""
        if "cli" not in self._logins:
            self._logins["cli"] = self.compose_env()
        return {**os.environ, **self._logins["cli"]}

    def compose_env(self, *args: str) -> dict[str, str]:
        """``deploy/compose-env ARGS``'s ``export NAME='VALUE'`` lines, as a mapping."""
        printed = _run([str(COMPOSE_ENV), *args], env={**self.env, "TUNEBUS_COMPOSE": " ".join(self.command)},
                       timeout=120).stdout
        found = dict(re.findall(r"^export (\w+)='([^']*)'$", printed, re.MULTILINE))
        assert set(found) == {"TUNEBUS_AMQP_URL", "TUNEBUS_STORAGE_CONNECTION_STRING",
                              "TUNEBUS_STORAGE_CONTAINER"}, printed
        assert AZURITE_KEY in found["TUNEBUS_STORAGE_CONNECTION_STRING"]
        return found

    def containers(self, service: str | None = None) -> list[str]:
        """Ids of the project's containers (of one service), but the one-shot ``credentials``'."""
        found = self.run("ps", "-q", *([service] if service else [])).stdout.split()
        if service is not None:
            return found
        return [c for c in found
                if self.inspect(c)["Config"]["Labels"].get("com.docker.compose.service") != "credentials"]

    def inspect(self, container: str) -> dict[str, Any]:
        """``docker inspect``'s object for the container."""
        return dict(json.loads(_run(["docker", "inspect", container]).stdout)[0])

    def health(self) -> dict[str, str]:
        """``{container name: health status}`` of every container of the project."""
        found = {}
        for container in self.containers():
            state = self.inspect(container)
            status = state["State"]
            health = status.get("Health") or {}
            found[str(state["Name"]).lstrip("/")] = health.get("Status", status.get("Status", "?"))
        return found

    def wait_healthy(self, expected: int, timeout: float = 240) -> None:
        """Until ``expected`` containers run and every one's healthcheck says healthy."""
        deadline = time.monotonic() + timeout
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            health = self.health()
            if len(health) == expected and set(health.values()) == {"healthy"}:
                return
            time.sleep(1)
        logs = self.run("logs", "--no-color", "--tail", "40", check=False).stdout
        raise AssertionError(f"not all healthy after {timeout} s: {health}\n{logs[-8000:]}")

    def logs(self, *services: str) -> str:
        return self.run("logs", "--no-color", *services, check=False).stdout


def _compose_command() -> list[str]:
    return _run([str(ENGINE), "compose"]).stdout.split()


@pytest.fixture(scope="session")
def steps() -> Iterator[Steps]:
    recorded = Steps()
    yield recorded
    print("\n" + recorded.summary(), flush=True)


@pytest.fixture(scope="session")
def docker_engine(steps: Steps) -> Iterator[None]:
    """A Docker engine and compose: installed if missing; a dockerd started here is stopped after."""
    with steps.step("docker engine and compose (install if missing, start dockerd if none answers)"):
        started = _run([str(ENGINE), "up"], timeout=900).stdout.split()
    try:
        yield
    finally:
        if started[:1] == ["started"]:
            with steps.step("stop the dockerd started for this run"):
                _run([str(ENGINE), "down", started[1]], timeout=120)


@pytest.fixture(scope="session")
def stack(docker_engine: None, steps: Steps) -> Iterator[Compose]:
    """The stack built and up, every healthcheck passing; removed (volumes too) afterwards."""
    compose = Compose(_compose_command(), f"tunebus-ct-{os.getpid()}", _free_port(), _free_port(),
                      _free_port(), steps)
    print(f"[compose-test] compose: {' '.join(compose.command)} "
          f"({_run([*compose.command, 'version']).stdout.strip()}); project {compose.project}; "
          f"AMQP 127.0.0.1:{compose.amqp_port}, blob 127.0.0.1:{compose.blob_port}", flush=True)
    with steps.step("base images: pulled, or stand-ins built where no registry answers"):
        result = _run([str(STANDINS)], timeout=1500)
        print(result.stderr[-3000:], flush=True)
    try:
        with steps.step(f"build {IMAGE} (TRIAL_REQUIREMENTS={TRIAL_REQUIREMENTS})"):
            compose.run("build", timeout=1500)
            # Compose builds the shared image once per service; the superseded builds dangle.
            _run(["docker", "image", "prune", "-f", "--filter", "label=org.tunebus.image=tunebus"])
        size = int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
        print(f"[compose-test] {IMAGE}: {size / 1e6:.0f} MB", flush=True)
        with steps.step("up -d, every healthcheck passing"):
            compose.run("up", "-d")
            compose.wait_healthy(expected=2 + len(TUNEBUS_SERVICES))
        yield compose
    finally:
        with steps.step("down -v (containers, volumes, network)"):
            compose.run("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300, check=False)
