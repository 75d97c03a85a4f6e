"""The ingestor publishes a running trial's intermediate results and progress while it runs (often
for an assessor, every 10 s otherwise), and stops watching once the trial has ended."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.metric_ingestor.service import Ingestor
from shared.messages import (
    Ticket,
    TrialEnded,
    TrialHeartbeat,
    TrialMetric,
    TrialProgress,
    TrialStatus,
    TrialStatusChanged,
)
from shared.state import ExperimentState, TrialRecord
from shared.storage import BlobStore, Layout
from tests.integration.fakes import RecordingBus

pytestmark = pytest.mark.integration


def _record(sequence: int, value: object, kind: str = "PERIODICAL") -> bytes:
    return json.dumps({"sequence": sequence, "kind": kind, "value": value,
                       "time": "2026-01-01T00:00:00Z"}).encode() + b"\n"


async def _append(store: BlobStore, path: str, data: bytes) -> None:
    """What a trial does with its URL: Append Block (the store signs with the key here)."""
    await store.create_append_blob(path)
    reply = await store._request("PUT", path, {"comp": "appendblock"}, {}, data)
    assert reply.status == 201, reply.status


def _due_now(ticket: Ticket) -> Ticket:
    return ticket.model_copy(update={"due": datetime.now(UTC) - timedelta(seconds=1)})


async def _experiment(store: BlobStore, experiment_id: str, config: dict[str, object]) -> Layout:
    layout = Layout(experiment_id)
    await store.write_json(layout.experiment_doc, {"config": {"trialConcurrency": 1, "trialCommand": "true",
                                                              **config}})
    state = ExperimentState(experiment_id=experiment_id, started_at=datetime.now(UTC), trials={
        "t1": TrialRecord(trial_id="t1", sequence_id=0, parameters={}, status=TrialStatus.RUNNING)})
    await store.write_json(layout.state_doc, state.model_dump(mode="json"))
    return layout


MEDIANSTOP = {"name": "Medianstop", "classArgs": {"start_step": 2}}


@pytest.mark.parametrize(("config", "interval"), [
    ({"assessor": MEDIANSTOP, "trainingService": {"platform": "local"}}, 2.0),  # an assessor judges them
    ({"trainingService": {"platform": "aml"}}, 10.0),  # an Azure ML run: never a matter of seconds
], ids=["assessor", "aml"])
async def test_a_trial_is_watched_from_its_start_and_its_results_published_while_it_runs(
        store: BlobStore, config: dict[str, object], interval: float) -> None:
    layout = await _experiment(store, "watch1", config)
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=2.0, progress_seconds=10.0)  # type: ignore[arg-type]

    running = TrialStatusChanged(experiment_id="watch1", trial_id="t1", parameter_id=0,
                                 status=TrialStatus.RUNNING)
    await ingestor.on_status(running)
    [ticket] = bus.tickets
    wait = (ticket.due - datetime.now(UTC)).total_seconds()
    assert interval - 0.5 < wait <= interval

    results = layout.results_blob("t1")
    for sequence, value in enumerate([0.25, 0.5]):
        await _append(store, results, _record(sequence, value))
    await _append(store, results, b'{"sequence":2,"kind":"PERI')  # half a line: read later
    await ingestor.on_ticket(_due_now(ticket))
    assert [(m.sequence, m.value, m.attempt) for m in bus.published if isinstance(m, TrialMetric)] == [
        (0, 0.25, 1), (1, 0.5, 1)]
    [progress] = [m for m in bus.published if isinstance(m, TrialProgress)]
    assert (progress.metric_count, progress.last_intermediate) == (2, 0.5)
    follow = bus.tickets[-1]
    assert follow.state["published"] == 1 and len(bus.tickets) == 2
    assert follow.state["offset"] == len(_record(0, 0.25) + _record(1, 0.5)), "next read: after the last line"

    await _append(store, results, b'ODICAL","value":0.6}\n' + _record(3, 0.75, "FINAL"))
    ended = running.model_copy(update={"status": TrialStatus.SUCCEEDED, "message_id": "m2"})
    await ingestor.on_status(ended)
    assert isinstance(bus.published[-1], TrialEnded) and bus.published[-1].final_value == 0.75
    assert bus.published[-1].status == TrialStatus.SUCCEEDED and bus.published[-1].metric_count == 4
    marker = await store.read_json(layout.attempt_root("t1") + "/ended.json")
    assert (marker is not None) == ("assessor" in config)  # a marker stops other replicas' watches
    await ingestor.on_ticket(_due_now(follow))
    assert len(bus.tickets) == 2  # the watch is over: no further ticket


async def test_a_local_trial_without_assessor_is_watched_once_a_heartbeat_shows_it_running(
        store: BlobStore) -> None:
    layout = await _experiment(store, "watch3", {"trainingService": {"platform": "local"}})
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=2.0, progress_seconds=10.0)  # type: ignore[arg-type]
    await ingestor.on_status(TrialStatusChanged(experiment_id="watch3", trial_id="t1", parameter_id=0,
                                                status=TrialStatus.RUNNING))
    assert bus.tickets == []  # most local trials end within seconds: nothing to watch yet

    beat = TrialHeartbeat(experiment_id="watch3", trial_ids=["t1", "gone"], replica="r1")
    await ingestor.on_heartbeat(beat)
    [ticket] = bus.tickets
    assert ticket.trial_id == "t1" and ticket.state["interval"] == 10.0
    assert await store.read_json(layout.attempt_root("t1") + "/watch.json") is not None
    await ingestor.on_heartbeat(beat.model_copy(update={"message_id": "beat2"}))
    other_replica = Ingestor(RecordingBus(), store, poll_seconds=2.0)  # type: ignore[arg-type]
    await other_replica.on_heartbeat(beat.model_copy(update={"message_id": "beat3"}))
    assert len(bus.tickets) == 1 and other_replica.bus.tickets == []  # type: ignore[attr-defined]


async def test_a_restarted_ingestor_ends_the_watch_of_a_trial_that_ended_meanwhile(store: BlobStore) -> None:
    experiment_id = "watch2"
    layout = Layout(experiment_id)
    await store.write_json(layout.experiment_doc, {"config": {"trialConcurrency": 1, "trialCommand": "true"}})
    state = ExperimentState(experiment_id=experiment_id, started_at=datetime.now(UTC), trials={
        "t1": TrialRecord(trial_id="t1", sequence_id=0, parameters={}, status=TrialStatus.SUCCEEDED)})
    await store.write_json(layout.state_doc, state.model_dump(mode="json"))
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=2.0, progress_seconds=10.0)  # type: ignore[arg-type]
    ticket = Ticket(experiment_id=experiment_id, purpose="ingest.watch", trial_id="t1",
                    due=datetime.now(UTC) - timedelta(seconds=1),
                    state={"attempt": 1, "parameter_id": 0, "published": -1, "interval": 10.0})
    await ingestor.on_ticket(ticket)
    assert bus.tickets == [] and bus.published == []


async def test_a_heartbeat_of_an_unreadable_experiment_is_dropped_not_dead_lettered(store: BlobStore) -> None:
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=2.0)  # type: ignore[arg-type]
    await ingestor.on_heartbeat(TrialHeartbeat(experiment_id="nosuchexp", trial_ids=["t1"], replica="r1"))
    assert bus.tickets == [] and bus.published == []


@pytest.mark.parametrize(("content", "says"), [
    (b'{"sequence":0,"kind":"FINAL","value":1' + b"0" * 400 + b"}\n", "too large for a float"),
    (b'{"sequence":0,"kind":"FINAL","value":NaN}\n', "not finite"),
    (b'{"sequence":0,"kind":"FINAL","value":' + b"[" * 20000 + b"]" * 20000 + b"}\n", "nested too deeply"),
    ('{"sequence":"²³","kind":"FINAL","value":1}\n'.encode(), "sequence must be an int"),
    (b"x" * 70_000 + b"\n", "over the 65536-byte limit"),
    (b"".join(_record(i, 0.5) for i in range(30)), "more than 20 results records"),
], ids=["10**400", "nan", "nested", "superscript", "oversized", "too-many"])
async def test_hostile_results_end_the_trial_failed_naming_why(store: BlobStore, content: bytes,
                                                               says: str) -> None:
    from shared.results_records import ResultsLimits

    layout = await _experiment(store, "hostile", {"trainingService": {"platform": "local"}})
    await _append(store, layout.results_blob("t1"), content)
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=2.0,  # type: ignore[arg-type]
                        limits=ResultsLimits(max_records=20), error_max_chars=300)
    await ingestor.on_status(TrialStatusChanged(experiment_id="hostile", trial_id="t1", parameter_id=0,
                                                status=TrialStatus.SUCCEEDED))
    ended = bus.published[-1]
    assert isinstance(ended, TrialEnded)
    assert ended.status == TrialStatus.FAILED and ended.error is not None and says in ended.error
    assert len(ended.error) <= 300


async def test_a_results_blob_over_the_byte_cap_is_read_up_to_it(store: BlobStore) -> None:
    from shared.results_records import ResultsLimits

    layout = await _experiment(store, "big", {"trainingService": {"platform": "local"}})
    await _append(store, layout.results_blob("t1"), _record(0, 0.5) + b" " * 5000 + b"\n")
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=2.0,  # type: ignore[arg-type]
                        limits=ResultsLimits(max_bytes=2048))
    await ingestor.on_status(TrialStatusChanged(experiment_id="big", trial_id="t1", parameter_id=0,
                                                status=TrialStatus.SUCCEEDED))
    ended = bus.published[-1]
    assert isinstance(ended, TrialEnded) and ended.status == TrialStatus.FAILED
    assert ended.metric_count == 1 and "only the first 2048 were read" in (ended.error or "")


@pytest.mark.parametrize("final_stored", [True, False], ids=["final-stored", "nothing-stored"])
async def test_a_lost_job_is_ended_from_what_it_stored(store: BlobStore, final_stored: bool) -> None:
    # The dispatcher reports a local job lost (its submitter went silent). A trial that had
    # written its final result finished: SUCCEEDED, not run again. One that had not is lost.
    layout = await _experiment(store, "lost1", {"trainingService": {"platform": "local"}})
    records = _record(0, 0.25) + (_record(1, 0.75, "FINAL") if final_stored else b"")
    await _append(store, layout.results_blob("t1"), records)
    bus = RecordingBus()
    ingestor = Ingestor(bus, store, poll_seconds=2.0)  # type: ignore[arg-type]
    await ingestor.on_status(TrialStatusChanged(experiment_id="lost1", trial_id="t1", parameter_id=0,
                                                status=TrialStatus.FAILED, error="lost: no heartbeat",
                                                lost=True))
    [ended] = [m for m in bus.published if isinstance(m, TrialEnded)]
    if final_stored:
        assert (ended.status, ended.final_value, ended.lost, ended.error) == (TrialStatus.SUCCEEDED, 0.75,
                                                                              False, None)
    else:
        assert (ended.status, ended.final_value, ended.lost) == (TrialStatus.FAILED, None, True)
        assert "lost: no heartbeat" in (ended.error or "")
    assert ended.metric_count == (2 if final_stored else 1)
