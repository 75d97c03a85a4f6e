"""Fixtures shared by every test: a real RabbitMQ and Azurite for integration tests.

Infrastructure starts once per session, and only when a test asks for it (``infra`` or a
fixture built on it); unit-test runs never pay for it. Where it comes from, in order:

1. ``TUNEBUS_TEST_AMQP_URL`` and ``TUNEBUS_TEST_STORAGE_CONNECTION_STRING`` are set: use that
   stack (fast edit-test loops against a running ``deploy/local up --infra-only``).
2. ``TUNEBUS_TEST_INFRA=docker``: testcontainers (the official images, or the stand-ins of
   ``deploy/images/build-standins.sh``). Only when asked for: a Docker engine that merely
   answers (``make compose-test`` starts one on CI) does not switch the suite to it.
3. Otherwise ``deploy/local up --infra-only`` in a private temporary state dir on free ports,
   stopped at session end. It installs RabbitMQ (apt) and Azurite (npm) if missing; CI does
   that beforehand (``deploy/local install``) so the first test's timeout is not spent there.

Isolation: all tests share one broker and one storage account. Tests isolate by unique
names: ``unique_id`` for experiment ids (services route and store by experiment id),
``fresh_container`` for a blob container of their own, and ``amqp_vhost`` when a test must
own the whole broker namespace (its own exchanges and queues; local and Docker modes).

Tests that use these fixtures are marked ``integration`` automatically;
``pytest -m "not integration"`` runs everything else.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"
RABBITMQ_IMAGE = "rabbitmq:3.13-management"
AZURITE_IMAGE = "mcr.microsoft.com/azure-storage/azurite:3.35.0"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_COMMAND = (
    "azurite-blob --blobHost 0.0.0.0 --blobPort 10000 --skipApiVersionCheck --disableTelemetry"
)
DEFAULT_CONTAINER = "tunebus"
INFRA_FIXTURES = {"infra", "fresh_container", "amqp_vhost"}


@dataclass(frozen=True)
class Infra:
    """A running broker and blob service, and how to reach them."""

    amqp_url: str
    """``amqp://<admin user>:<password>@host:port/`` (default vhost; guest in the docker image)."""
    storage_connection_string: str
    """Azurite connection string with the well-known development account."""
    container: str
    """A blob container that exists for the whole session (``TUNEBUS_STORAGE_CONTAINER``)."""
    mode: str
    """``local``, ``docker`` or ``external``: where the infrastructure came from."""
    rabbitmqctl: Callable[..., None] | None = field(default=None, repr=False)
    """Runs ``rabbitmqctl ARGS`` against the broker, where we own it."""
    credentials_dir: Path | None = None
    """deploy/local's generated broker passwords (``amqp-<user>``), where it made the broker."""

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a service or CLI subprocess pointed at this infrastructure."""
        return {
            **os.environ,
            "TUNEBUS_AMQP_URL": self.amqp_url,
            "TUNEBUS_STORAGE_CONNECTION_STRING": self.storage_connection_string,
            "TUNEBUS_STORAGE_CONTAINER": self.container,
            **extra,
        }


# tests/compose builds images and runs the stack in Docker (minutes): collected only when named,
# `pytest tests/compose` (`make compose-test`), never by a plain `pytest` (`make test`).
collect_ignore = ["compose"]


#: pytest's hang guard for an end-to-end test. Each one bounds its own waits (a create up to
#: 180-280 s, an experiment's end up to 90-240 s) and fails with what the services logged; the
#: global 300 s, which also counts starting the test's stack, must not end it first with no word
#: (a loaded CI machine did: "Timeout (>300.0s) from pytest-timeout" in the chaos test).
E2E_TIMEOUT_SECONDS = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INFRA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("e2e") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_SECONDS))


# --- where the infrastructure comes from -------------------------------------------------


def _external_infra() -> Infra | None:
    amqp_url = os.environ.get("TUNEBUS_TEST_AMQP_URL")
    storage = os.environ.get("TUNEBUS_TEST_STORAGE_CONNECTION_STRING")
    if not (amqp_url and storage):
        return None
    return Infra(amqp_url, storage, DEFAULT_CONTAINER, "external")


def _docker_requested() -> bool:
    """``TUNEBUS_TEST_INFRA=docker``; ``local`` or unset means deploy/local; anything else is a typo."""
    mode = os.environ.get("TUNEBUS_TEST_INFRA", "local").strip().lower() or "local"
    if mode not in ("local", "docker"):
        raise pytest.UsageError(f"TUNEBUS_TEST_INFRA must be 'local' or 'docker', not {mode!r}")
    return mode == "docker"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(low: int, high: int, *, also_free_at_offset: int = 0) -> int:
    """A random port in [low, high] that is free, and free at ``port + also_free_at_offset``."""
    for _ in range(500):
        port = random.randint(low, high)
        if _port_is_free(port) and _port_is_free(port + also_free_at_offset):
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _run_deploy_local(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(DEPLOY_LOCAL), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"deploy/local {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
    return result.stdout


def _local_infra(state_dir: Path) -> Iterator[Infra]:
    # deploy/local derives the Erlang distribution port as AMQP port + 20000.
    amqp_port = _free_port(21000, 29999, also_free_at_offset=20000)
    blob_port = _free_port(11000, 19999)
    env = {
        **os.environ,
        "TUNEBUS_LOCAL_DIR": str(state_dir),
        "TUNEBUS_AMQP_PORT": str(amqp_port),
        "TUNEBUS_BLOB_PORT": str(blob_port),
        # Share one Azurite install across sessions instead of npm-installing per tmp dir.
        "TUNEBUS_AZURITE_DIR": os.environ.get("TUNEBUS_AZURITE_DIR", str(REPO_ROOT / ".local" / "azurite")),
    }
    try:
        _run_deploy_local(env, "up", "--infra-only")
        exports = dict(
            # The operators' account: tests declare vhosts and publish every routing key.
            line.removeprefix("export ").split("=", 1)
            for line in _run_deploy_local(env, "env", "--admin").splitlines()
        )

        def rabbitmqctl(*args: str) -> None:
            _run_deploy_local(env, "ctl", *args, timeout=120)

        yield Infra(
            amqp_url=exports["TUNEBUS_AMQP_URL"].strip("'"),
            storage_connection_string=exports["TUNEBUS_STORAGE_CONNECTION_STRING"].strip("'"),
            container=DEFAULT_CONTAINER,
            mode="local",
            rabbitmqctl=rabbitmqctl,
            credentials_dir=state_dir / "credentials",
        )
    finally:
        subprocess.run([str(DEPLOY_LOCAL), "down"], env=env, capture_output=True, timeout=120, check=False)


def _docker_infra() -> Iterator[Infra]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    rabbit = (
        DockerContainer(RABBITMQ_IMAGE)
        .with_exposed_ports(5672)
        .with_volume_mapping(
            str(REPO_ROOT / "deploy/rabbitmq/rabbitmq.conf"), "/etc/rabbitmq/conf.d/20-tunebus.conf", "ro"
        )
        .with_volume_mapping(
            str(REPO_ROOT / "deploy/rabbitmq/enabled_plugins.compose"), "/etc/rabbitmq/enabled_plugins", "ro"
        )
    )
    azurite = DockerContainer(AZURITE_IMAGE).with_command(AZURITE_COMMAND).with_exposed_ports(10000)
    with rabbit, azurite:
        wait_for_logs(rabbit, "Server startup complete", timeout=180)
        wait_for_logs(azurite, "successfully listening", timeout=60)
        rabbit_host, blob_host = rabbit.get_container_host_ip(), azurite.get_container_host_ip()
        blob_port = azurite.get_exposed_port(10000)

        def rabbitmqctl(*args: str) -> None:
            code, output = rabbit.exec(["rabbitmqctl", *args])
            if code != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {output!r}")

        yield Infra(
            amqp_url=f"amqp://guest:guest@{rabbit_host}:{rabbit.get_exposed_port(5672)}/",
            storage_connection_string=(
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                f"AccountKey={AZURITE_KEY};BlobEndpoint=http://{blob_host}:{blob_port}/devstoreaccount1;"
            ),
            container=DEFAULT_CONTAINER,
            mode="docker",
            rabbitmqctl=rabbitmqctl,
        )


def _create_container(connection_string: str, name: str) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(connection_string) as service:
        try:
            service.create_container(name)
        except ResourceExistsError:
            pass


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """RabbitMQ + Azurite for the whole session (see the module docstring for the source)."""
    external = _external_infra()
    if external is not None:
        sources: Iterator[Infra] = iter([external])
    elif _docker_requested():
        sources = _docker_infra()
    else:
        sources = _local_infra(tmp_path_factory.mktemp("tunebus-local"))
    started = time.monotonic()
    try:
        ready = next(sources)
    except RuntimeError as error:
        pytest.fail(f"could not start test infrastructure: {error}", pytrace=False)
    print(f"\n[infra] {ready.mode} infrastructure ready in {time.monotonic() - started:.1f}s")
    _create_container(ready.storage_connection_string, ready.container)
    yield ready
    for _ in sources:  # runs the generator's teardown
        pass


@pytest.fixture
def unique_id(request: pytest.FixtureRequest) -> str:
    """An id no other test uses (experiment ids, queue names): ``t-<test name>-<random>``."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:24].strip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fresh_container(infra: Infra) -> Iterator[str]:
    """Name of a blob container created for this test alone, deleted afterwards."""
    from azure.storage.blob import BlobServiceClient

    name = f"t-{uuid.uuid4().hex[:20]}"
    _create_container(infra.storage_connection_string, name)
    yield name
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        try:
            service.delete_container(name)
        except Exception:  # a test may have deleted it; nothing to clean up then
            pass


@pytest.fixture
def amqp_vhost(infra: Infra) -> Iterator[str]:
    """AMQP URL of a vhost created for this test alone (the infra's user has full rights), deleted after."""
    if infra.rabbitmqctl is None:
        pytest.skip("amqp_vhost needs rabbitmqctl; the external infrastructure gives none")
    name = f"t-{uuid.uuid4().hex[:12]}"
    infra.rabbitmqctl("add_vhost", name)
    user = urlsplit(infra.amqp_url).username or "guest"
    infra.rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    yield infra.amqp_url.rstrip("/") + "/" + quote(name, safe="")
    infra.rabbitmqctl("delete_vhost", name)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A temporary folder the trial user can reach (pytest's own tmp folders are private to root),
    for trials' work folders and the files tests hand them."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tunebus-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
