"""The infrastructure the services rely on behaves as they assume: RabbitMQ takes quorum
queues with delivery limits, Azurite stores blobs and enforces SAS permissions and expiry;
and the deployment files (docker-compose, deploy/local) are well formed."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import pytest
import yaml
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from shared.bus import Bus
from shared.topology import (
    DEAD_LETTER_QUEUE,
    DELIVERY_LIMIT,
    EVENTS_EXCHANGE,
    EXPERIMENT_HEADER,
    QUEUES,
    SHARDED,
    QueueSpec,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVICES = {"tuner", "dispatcher", "aml-submitter", "metric-ingestor", "dashboard"}


# --- RabbitMQ ------------------------------------------------------------------------------


async def test_broker_takes_quorum_queue_and_confirmed_persistent_message(infra, unique_id):
    connection = await aio_pika.connect(infra.amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            unique_id, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 5}
        )
        await channel.default_exchange.publish(
            aio_pika.Message(b"hello", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue.name,
        )
        message = await queue.get(timeout=5)
        assert message.body == b"hello"
        await message.ack()
        await queue.delete(if_unused=False, if_empty=False)


SHARD_QUEUES = {q.name for sharded in SHARDED for q in sharded.queues()}
# One shard of each sharded service stands for all (they are declared alike); the shard a
# message lands in is the hash ring's choice, so the test watches them all.
WORK_QUEUES = [spec for spec in QUEUES if spec.quorum and spec.name not in SHARD_QUEUES] + [
    sharded.queue(0) for sharded in SHARDED]


def _routing(spec: QueueSpec) -> tuple[str, list[str]]:
    """A routing key that reaches ``spec`` from the events exchange, and the queues to watch."""
    for sharded in SHARDED:
        if spec.name in {q.name for q in sharded.queues()}:
            return sharded.bindings[0], [q.name for q in sharded.queues()]
    return spec.bindings[0], [spec.name]


@pytest.mark.parametrize("spec", WORK_QUEUES, ids=[spec.name for spec in WORK_QUEUES])
async def test_a_message_whose_consumer_keeps_dying_is_dead_lettered_at_the_delivery_limit(
        amqp_vhost: str, spec: QueueSpec) -> None:
    """README/DESIGN: quorum work queues with a delivery limit stop poison messages. A consumer
    that dies holding a delivery (its channel closes unacked, as a killed process's does) returns
    it; after the first delivery and DELIVERY_LIMIT redeliveries RabbitMQ moves it, as published,
    to tunebus.dead-letter with x-death reason ``delivery_limit`` and the queue it left."""
    bus = Bus(amqp_vhost, service="test")
    await bus.connect()  # the real topology, as every service declares it
    await bus.close()
    routing_key, watched = _routing(spec)
    body = b'{"poison": true, "storageAccountKey": "kept as published"}'
    connection = await aio_pika.connect(amqp_vhost, timeout=10)
    async with connection:
        publisher = await connection.channel(publisher_confirms=True)
        events = await publisher.get_exchange(EVENTS_EXCHANGE)
        await events.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                              headers={EXPERIMENT_HEADER: "poisoned"}),
                             routing_key=routing_key)
        delivery_counts: list[int] = []
        left: set[str] = set()
        for _ in range(DELIVERY_LIMIT + 3):  # bounded: a limit that never bites fails below
            where, message = await _next_delivery(connection, watched)
            if where == DEAD_LETTER_QUEUE:
                break
            delivery_counts.append(int((message.headers or {}).get("x-delivery-count", 0)))
            left.add(where)
        else:
            pytest.fail(f"{spec.name}: still delivered after {len(delivery_counts)} deliveries")
    assert delivery_counts == list(range(DELIVERY_LIMIT + 1))
    assert len(left) == 1, f"one experiment's message went to several shards: {left}"
    assert message.body == body and message.routing_key == routing_key
    death = message.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["exchange"], list(death["routing-keys"])) == (
        "delivery_limit", left.pop(), death["exchange"], [routing_key])
    assert death["exchange"] in (EVENTS_EXCHANGE, *(sharded.exchange for sharded in SHARDED))


async def _next_delivery(connection: aio_pika.abc.AbstractConnection,
                         queues: list[str]) -> tuple[str, aio_pika.abc.AbstractIncomingMessage]:
    """The message's next appearance, on one of ``queues`` or on the dead-letter queue (whichever comes
    first; waited for as an event, bounded). A delivery from ``queue`` is returned unacked by
    closing its channel, as a consumer that died; one from the dead-letter queue is acked."""
    channel = await connection.channel()
    arrived: asyncio.Future[tuple[str, aio_pika.abc.AbstractIncomingMessage]] = (
        asyncio.get_running_loop().create_future())

    def on_message(source: str) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if not arrived.done():
                arrived.set_result((source, message))
        return take

    for source in (*queues, DEAD_LETTER_QUEUE):
        await (await channel.get_queue(source)).consume(on_message(source))
    try:
        where, message = await asyncio.wait_for(arrived, timeout=60)
        if where == DEAD_LETTER_QUEUE:
            await message.ack()
    finally:
        await channel.close()  # an unacked work delivery goes back to its queue
    return where, message


async def test_consistent_hash_exchange_routes_each_key_to_one_queue(amqp_vhost: str) -> None:
    """The plugin deploy/rabbitmq enables: an x-consistent-hash exchange spreads routing keys over
    its bound queues (by weight) and sends every message of one key to the same queue."""
    connection = await aio_pika.connect(amqp_vhost, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange("hashed", "x-consistent-hash")
        queues = [await channel.declare_queue(f"hashed-{n}") for n in range(2)]
        for queue in queues:
            await queue.bind(exchange, routing_key="10")  # the binding key is the queue's weight
        keys = [f"experiment-{n}" for n in range(100)]
        for round_ in range(2):
            for key in keys:
                await exchange.publish(aio_pika.Message(f"{round_}:{key}".encode()), routing_key=key)
        received: list[dict[str, int]] = []
        for queue in queues:
            keys_here: dict[str, int] = {}
            while (message := await queue.get(fail=False, no_ack=True)) is not None:
                key = message.body.decode().split(":", 1)[1]
                keys_here[key] = keys_here.get(key, 0) + 1
            received.append(keys_here)
    assert all(received), f"one queue got nothing: {received}"
    assert set(received[0]).isdisjoint(received[1]), "a key went to both queues"
    assert set(received[0]) | set(received[1]) == set(keys)
    assert all(count == 2 for per_queue in received for count in per_queue.values())


async def test_amqp_vhost_is_private(infra, amqp_vhost, unique_id):
    """A queue declared in a test's vhost exists there and nowhere else (not in the default vhost)."""
    connection = await aio_pika.connect(amqp_vhost, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(unique_id, auto_delete=True)
        await channel.declare_queue(unique_id, passive=True)  # there: no error
        default = await aio_pika.connect(infra.amqp_url, timeout=10)
        async with default:
            default_channel = await default.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await default_channel.declare_queue(unique_id, passive=True)


# --- Azurite -------------------------------------------------------------------------------


def _write_only_sas_url(infra, container: str, expires_in: timedelta) -> str:
    """A container SAS URL allowing create + write only, as trials get for their metrics."""
    service = BlobServiceClient.from_connection_string(infra.storage_connection_string)
    sas = generate_container_sas(
        account_name=service.account_name,
        container_name=container,
        account_key=service.credential.account_key,
        permission=ContainerSasPermissions(create=True, write=True),
        expiry=datetime.now(UTC) + expires_in,
    )
    return f"{service.url.rstrip('/')}/{container}?{sas}"


def test_blob_round_trip(infra, fresh_container):
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        blob = service.get_blob_client(fresh_container, "experiments/e1/trials/t1/metrics/0.json")
        blob.upload_blob(b'{"value": 0.5}', overwrite=True)
        assert blob.download_blob().readall() == b'{"value": 0.5}'
        listed = [b.name for b in service.get_container_client(fresh_container).list_blobs()]
        assert listed == [blob.blob_name]


def test_session_container_exists(infra):
    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        assert service.get_container_client(infra.container).exists()


def test_write_only_sas_can_write_but_not_read(infra, fresh_container):
    container = ContainerClient.from_container_url(
        _write_only_sas_url(infra, fresh_container, timedelta(minutes=10))
    )
    blob = container.get_blob_client("metrics/0.json")
    blob.upload_blob(b"{}")

    with pytest.raises(HttpResponseError) as read_error:
        blob.download_blob().readall()
    assert read_error.value.status_code == 403
    with pytest.raises(HttpResponseError) as list_error:
        list(container.list_blobs())
    assert list_error.value.status_code == 403

    with BlobServiceClient.from_connection_string(infra.storage_connection_string) as service:
        assert service.get_blob_client(fresh_container, "metrics/0.json").download_blob().readall() == b"{}"


def test_expired_sas_cannot_write(infra, fresh_container):
    container = ContainerClient.from_container_url(
        _write_only_sas_url(infra, fresh_container, timedelta(minutes=-1))
    )
    blob = container.get_blob_client("late.json")
    with pytest.raises(HttpResponseError) as error:
        blob.upload_blob(b"{}")
    assert error.value.status_code == 403


# --- deployment files ----------------------------------------------------------------------


def _compose_validator() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_file_validates():
    validator = _compose_validator()
    if validator is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = subprocess.run(
        [*validator, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_structure():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert SERVICES | {"rabbitmq", "azurite", "credentials"} <= set(services)
    for name, service in services.items():
        if name == "credentials":  # one-shot: it writes the broker logins and exits 0
            assert service["restart"] == "no" and "shared.broker_users" in service["command"]
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"
    # The broker loads the logins the one-shot wrote, and starts only once it has written them.
    assert services["rabbitmq"]["depends_on"] == {
        "credentials": {"condition": "service_completed_successfully"}}
    for name in SERVICES:  # each service logs in as its own user, its password from a file
        env = services[name]["environment"]
        login = urlsplit(env["TUNEBUS_AMQP_URL"])
        assert login.username and login.username.startswith("tunebus-") and login.password is None, name
        assert env["TUNEBUS_AMQP_PASSWORD_FILE"].startswith("/credentials/amqp-tunebus-"), name
    for scaled in ("aml-submitter", "tuner", "dispatcher"):  # README, Scaling: --scale each
        assert "container_name" not in services[scaled], f"{scaled}: a fixed container name stops --scale"
        assert "ports" not in services[scaled], f"{scaled}: host ports stop --scale"
        assert "hostname" not in services[scaled], f"{scaled}: a fixed hostname makes replicas' names clash"
    for name in SERVICES:
        depends = services[name]["depends_on"]
        assert {dep: spec["condition"] for dep, spec in depends.items()} == {
            "rabbitmq": "service_healthy",
            "azurite": "service_healthy",
        }, name
        assert services[name]["command"][-1] == f"services.{name.replace('-', '_')}"


def test_deploy_local_env_follows_ports(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "TUNEBUS_LOCAL_DIR": str(tmp_path),
        "TUNEBUS_AMQP_PORT": "25999",
        "TUNEBUS_BLOB_PORT": "15999",
    }
    # The broker's passwords are generated by `up`; here, as it would have written them.
    (tmp_path / "credentials").mkdir(mode=0o700)
    (tmp_path / "credentials" / "amqp-tunebus-cli").write_text("cli-pw\n")
    (tmp_path / "credentials" / "amqp-tunebus-admin").write_text("admin-pw\n")
    result = subprocess.run(
        [str(REPO_ROOT / "deploy/local"), "env"], env=env, capture_output=True, text=True, check=True
    )
    assert "export TUNEBUS_AMQP_URL='amqp://tunebus-cli:cli-pw@127.0.0.1:25999/'" in result.stdout
    assert "BlobEndpoint=http://127.0.0.1:15999/devstoreaccount1;" in result.stdout
    admin = subprocess.run([str(REPO_ROOT / "deploy/local"), "env", "--admin"], env=env, capture_output=True,
                           text=True, check=True)
    assert "export TUNEBUS_AMQP_URL='amqp://tunebus-admin:admin-pw@127.0.0.1:25999/'" in admin.stdout
    (tmp_path / "credentials" / "amqp-tunebus-cli").unlink()
    missing = subprocess.run([str(REPO_ROOT / "deploy/local"), "env"], env=env, capture_output=True,
                             text=True, check=False)
    assert missing.returncode != 0 and "deploy/local up" in missing.stderr


def test_deploy_local_up_takes_replica_counts_for_tuners_and_dispatchers(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TUNEBUS_LOCAL_DIR": str(tmp_path)}
    for bad in (("--tuners", "0"), ("--dispatchers", "two"), ("--submitters", "100")):
        refused = subprocess.run([str(REPO_ROOT / "deploy/local"), "up", *bad], env=env, capture_output=True,
                                 text=True, check=False)
        assert refused.returncode != 0 and f"{bad[0]} wants a number from 1 to 99" in refused.stderr, refused
    # The instances `up` starts: the first replica keeps the plain name (logs, the supervisor).
    script = f'REPO_ROOT={REPO_ROOT}; source "$REPO_ROOT/deploy/lib/services.sh"; service_instances 2 3 2'
    listed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["tuner", "tuner-2", "tuner-3", "dispatcher", "dispatcher-2",
                                     "metric_ingestor", "dashboard", "aml_submitter-1", "aml_submitter-2"]


def test_deploy_local_takes_a_zombie_for_dead(tmp_path: Path) -> None:
    # A killed process that its parent has not reaped yet still answers `kill -0`: `up` took
    # such a service for alive and did not start it again.
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while _proc_state(zombie.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _proc_state(zombie.pid) == "Z"
    script = (f'REPO_ROOT={REPO_ROOT}; source {REPO_ROOT}/deploy/lib/common.sh; '
              f'pid_alive {zombie.pid} && echo zombie-alive || echo zombie-dead; '
              f'pid_alive {os.getpid()} && echo self-alive || echo self-dead; '
              f'pid_alive 999999999 && echo none-alive || echo none-dead')
    try:
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "TUNEBUS_LOCAL_DIR": str(tmp_path)}).stdout.split()
    finally:
        zombie.wait()
    assert out == ["zombie-dead", "self-alive", "none-dead"]


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_standin_images_carry_the_names_the_deployment_files_use():
    """build-standins.sh tags its stand-ins with exactly the names the Dockerfile and compose pull."""
    script = (REPO_ROOT / "deploy/images/build-standins.sh").read_text()
    names = dict(re.findall(r"^(PYTHON_IMAGE|RABBITMQ_IMAGE|AZURITE_VERSION)=(\S+)$", script, re.MULTILINE))
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    dockerfile = (REPO_ROOT / "deploy/Dockerfile").read_text()
    assert f"FROM {names['PYTHON_IMAGE']}\n" in dockerfile
    assert compose["rabbitmq"]["image"] == names["RABBITMQ_IMAGE"]
    azurite = f"mcr.microsoft.com/azure-storage/azurite:{names['AZURITE_VERSION']}"
    assert compose["azurite"]["image"] == azurite
    assert 'AZURITE_IMAGE="mcr.microsoft.com/azure-storage/azurite:$AZURITE_VERSION"' in script


def test_compose_passes_trial_requirements_and_ports_from_the_environment():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    build_args = compose["aml-submitter"]["build"]["args"]
    assert build_args["TRIAL_REQUIREMENTS"] == "${TUNEBUS_TRIAL_REQUIREMENTS:-}"
    assert compose["rabbitmq"]["ports"][0] == "127.0.0.1:${TUNEBUS_AMQP_PORT:-5672}:5672"
    assert compose["azurite"]["ports"][0] == "127.0.0.1:${TUNEBUS_BLOB_PORT:-10000}:10000"


def test_deploy_local_down_stops_the_broker_node_whose_wrapper_is_gone(tmp_path: Path) -> None:
    # The node (beam.smp) outlives a SIGKILLed wrapper script; `down` must still stop it, or the
    # next `up` finds its port taken.
    from tests.conftest import _local_infra

    infra = _local_infra(tmp_path / "state")
    next(infra)  # up --infra-only on free ports, in its own state dir
    try:
        wrapper = int((tmp_path / "state" / "run" / "rabbitmq.pid").read_text())
        node = int((tmp_path / "state" / "rabbitmq" / "beam.pid").read_text())
        assert node != wrapper and _proc_state(node) not in ("Z", "X")
        os.kill(wrapper, 9)  # the script alone
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{wrapper}") and _proc_state(wrapper) not in ("Z", "X"):
            assert time.monotonic() < deadline, "the wrapper outlived SIGKILL"
            time.sleep(0.05)
        assert _proc_state(node) not in ("Z", "X"), "the node went with its wrapper: nothing to test"
    finally:
        next(infra, None)  # deploy/local down
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{node}") and _proc_state(node) not in ("Z", "X"):
        assert time.monotonic() < deadline, f"node {node} still runs after down"
        time.sleep(0.1)
