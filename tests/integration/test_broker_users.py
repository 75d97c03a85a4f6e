"""The broker's accounts (deploy/local, shared/broker_users.py): no guest, and each service or the
CLI may publish only the routing keys it emits."""

from __future__ import annotations

from urllib.parse import urlsplit

import aio_pika
import pytest

from shared.broker_users import ADMIN_USER, USERS
from shared.bus import Bus, TransientError
from shared.messages import (
    ExperimentStart,
    ExperimentStatus,
    ExperimentStatusChanged,
    Message,
    TrialStatus,
    TrialStatusChanged,
)
from tests.conftest import Infra

pytestmark = pytest.mark.integration


def _url(infra: Infra, user: str, password: str | None = None) -> str:
    assert infra.credentials_dir is not None
    secret = password or (infra.credentials_dir / f"amqp-{user}").read_text().strip()
    where = urlsplit(infra.amqp_url)
    return f"amqp://{user}:{secret}@{where.hostname}:{where.port}/"


@pytest.fixture
def local_broker(infra: Infra) -> Infra:
    if infra.credentials_dir is None:
        pytest.skip("the broker's accounts are made by deploy/local")
    return infra


async def test_guest_is_gone_and_passwords_live_in_the_deployments_state(local_broker: Infra) -> None:
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(_url(local_broker, "guest", "guest"), timeout=10)
    assert local_broker.credentials_dir is not None
    for user in (*[u.name for u in USERS], ADMIN_USER):
        path = local_broker.credentials_dir / f"amqp-{user}"
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    assert local_broker.credentials_dir.stat().st_mode & 0o077 == 0


START = ExperimentStart(experiment_id="perm", config={})
STATUS = ExperimentStatusChanged(experiment_id="perm", status=ExperimentStatus.DONE)
RUNNING = TrialStatusChanged(experiment_id="perm", trial_id="t", parameter_id=0, status=TrialStatus.RUNNING)


@pytest.mark.parametrize(("user", "allowed", "refused"), [
    ("tunebus-cli", START, STATUS),
    ("tunebus-submitter", RUNNING, START),
    ("tunebus-dispatcher", STATUS, START),
    ("tunebus-tuner", None, STATUS),
    ("tunebus-ingestor", None, START),
])
async def test_each_account_publishes_only_what_it_emits(local_broker: Infra, user: str,
                                                         allowed: Message | None, refused: Message) -> None:
    bus = Bus(_url(local_broker, user), service=f"test-{user}")
    try:
        await bus.connect(attempts=1)  # declaring the whole topology is allowed
        if allowed is not None:
            await bus.publish(allowed)
        with pytest.raises(TransientError, match="ACCESS_REFUSED"):
            await bus.publish(refused)
    finally:
        await bus.close()


async def test_the_cli_account_can_watch_an_experiments_events(local_broker: Infra) -> None:
    from tunebus.cli.events import _EventWatcher

    watcher = _EventWatcher("perm")
    await watcher.start(_url(local_broker, "tunebus-cli"))  # its own exclusive queue, bound to events
    await watcher.close()
