"""The dispatcher's stored records through its real handlers (in-memory storage): the summary
holds only active trials and stays small; every ended trial is in the ended log exactly once,
whatever step a crash cut; an old-format state.json migrates on load; a finished experiment
leaves the cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.dispatcher.lifecycle import Policy
from services.dispatcher.service import Dispatcher
from shared import records
from shared.messages import (
    ExperimentStart,
    ExperimentStatus,
    SuggestRequest,
    TrialEnded,
    TrialStatus,
    TrialSuggested,
)
from shared.state import ExperimentState, best_trial
from shared.storage import Layout
from tests.unit.test_dispatcher_outbox import FakeBus
from tests.unit.test_dispatcher_outbox import FakeStore as OutboxFakeStore
from tests.unit.test_records import AppendBlobs

TRIALS = 30
CONFIG = {"trialCommand": "python3 t.py", "trialConcurrency": 3, "maxTrialNumber": TRIALS,
          "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
          "tuner": {"name": "Random"}, "trainingService": {"platform": "local"}}


class FakeStore(OutboxFakeStore, AppendBlobs):
    """The outbox tests' store plus the record tests' append blobs."""


def summary(store: FakeStore) -> ExperimentState:
    return ExperimentState.model_validate_json(store.blobs[Layout("exp1").state_doc])


def logged_ids(store: FakeStore) -> list[str]:
    prefix = "experiments/exp1/trials-ended/"
    return [r.trial_id for path in sorted(p for p in store.blobs if p.startswith(prefix))
            for r in records.parse_chunk(store.blobs[path])]


async def answer_requests(dispatcher: Dispatcher, bus: FakeBus) -> None:
    """Answer every suggestion request published so far (x = parameter id / 100)."""
    asked = [i for m in bus.published if isinstance(m, SuggestRequest) for i in m.parameter_ids]
    bus.published = [m for m in bus.published if not isinstance(m, SuggestRequest)]
    for parameter_id in asked:
        await dispatcher.on_suggested(TrialSuggested(experiment_id="exp1", parameter_id=parameter_id,
                                                     parameters={"x": parameter_id / 100}))


async def end_one(dispatcher: Dispatcher, bus: FakeBus) -> None:
    """End the oldest submitted trial that is still active, with value = its x."""
    state = dispatcher.states._cache["exp1"].state
    trial = min(state.running(), key=lambda t: t.sequence_id)
    await dispatcher.on_ended(TrialEnded(experiment_id="exp1", trial_id=trial.trial_id,
                                         parameter_id=trial.sequence_id, status=TrialStatus.SUCCEEDED,
                                         final_value=trial.parameters["x"]))


async def run_until(dispatcher: Dispatcher, bus: FakeBus, ended: int) -> None:
    for _ in range(ended):
        await answer_requests(dispatcher, bus)
        await end_one(dispatcher, bus)
        await answer_requests(dispatcher, bus)


async def started() -> tuple[Dispatcher, FakeStore, FakeBus]:
    store, bus = FakeStore(), FakeBus()
    dispatcher = Dispatcher(bus, store, Policy())  # type: ignore[arg-type]
    await dispatcher.on_start(ExperimentStart(experiment_id="exp1", config=CONFIG))
    return dispatcher, store, bus


async def test_a_whole_experiment_keeps_the_summary_small_and_logs_every_trial_once() -> None:
    dispatcher, store, bus = await started()
    sizes = []
    for _ in range(TRIALS):
        await run_until(dispatcher, bus, 1)
        sizes.append(len(store.blobs[Layout("exp1").state_doc]))
    final = summary(store)
    assert final.status == ExperimentStatus.DONE
    assert sorted(logged_ids(store)) == sorted(set(logged_ids(store))) and len(logged_ids(store)) == TRIALS
    assert final.trials == {} and final.pending_ended == [] and final.outbox == []
    assert final.trials_by_status() == {"SUCCEEDED": TRIALS} and final.trials_created == TRIALS
    best = best_trial(final)
    assert best is not None and best.sequence_id == TRIALS - 1  # x grows with the id
    # Bounded by the concurrency, not the trial count: the summaries written at the end are
    # no bigger than those of the first ten trials plus a record or two (moving ended ones).
    everything = await records.read_full_state(store, "exp1")  # type: ignore[arg-type]
    assert everything is not None and len(everything.trials) == TRIALS
    record = len(everything.model_dump_json()) / TRIALS
    assert max(sizes[-10:]) <= max(sizes[:10]) + 3 * record
    assert len(everything.model_dump_json()) > 3 * max(sizes[-10:])
    assert "exp1" not in dispatcher.states._cache  # finished: forgotten


async def test_a_crash_after_the_summary_write_and_before_the_append_loses_no_trial() -> None:
    dispatcher, store, bus = await started()
    await run_until(dispatcher, bus, 4)
    store.fail_after = store.appends  # every append from now on fails
    with pytest.raises(ConnectionError):
        await run_until(dispatcher, bus, 1)  # the summary is written, the append fails
    assert len(summary(store).pending_ended) == 1
    # The process dies: a new one loads the summary, appends the pending trial, goes on.
    store.fail_after = None
    fresh = Dispatcher(bus, store, Policy())  # type: ignore[arg-type]
    bus.published.clear()
    await fresh.states.load("exp1")
    assert len(logged_ids(store)) == 5 == len(set(logged_ids(store)))
    # The redelivered trial.ended changes nothing: the trial is out of the summary, counted once.
    ended_id = logged_ids(store)[-1]
    await fresh.on_ended(TrialEnded(experiment_id="exp1", trial_id=ended_id, parameter_id=4,
                                    status=TrialStatus.FAILED))
    state = fresh.states._cache["exp1"].state
    assert state.trials_by_status()["SUCCEEDED"] == 5 and "FAILED" not in state.trials_by_status()
    await run_until(fresh, bus, TRIALS - 5)
    final = summary(store)
    assert final.status == ExperimentStatus.DONE and final.trials_by_status() == {"SUCCEEDED": TRIALS}
    assert sorted(logged_ids(store)) == sorted(set(logged_ids(store))) and len(logged_ids(store)) == TRIALS


async def test_a_crash_after_the_append_and_before_the_next_write_appends_nothing_twice() -> None:
    dispatcher, store, bus = await started()
    await run_until(dispatcher, bus, 5)
    await end_one(dispatcher, bus)  # its summary write lists the trial as pending; then appended
    stale = store.blobs[Layout("exp1").state_doc]  # holds its last ended trial as pending
    assert summary(store).pending_ended and len(logged_ids(store)) == 6
    fresh = Dispatcher(bus, store, Policy())  # type: ignore[arg-type]
    await fresh.states.load("exp1")
    assert store.blobs[Layout("exp1").state_doc] == stale  # a load writes nothing
    assert len(logged_ids(store)) == 6 == len(set(logged_ids(store)))


async def test_an_old_format_state_migrates_on_load_counting_each_trial_once() -> None:
    dispatcher, store, bus = await started()
    await run_until(dispatcher, bus, 8)
    everything = await records.read_full_state(store, "exp1")  # type: ignore[arg-type]
    assert everything is not None
    old: dict[str, Any] = json.loads(everything.model_dump_json())
    for key in ("trials_created", "ended_counts", "best", "ended_logged", "pending_ended"):
        old.pop(key)
    store.blobs = {p: b for p, b in store.blobs.items() if "/trials-ended/" not in p}
    store.blobs[Layout("exp1").state_doc] = json.dumps(old).encode()
    store.version += 1
    fresh = Dispatcher(bus, store, Policy())  # type: ignore[arg-type]
    bus.published.clear()
    await fresh.states.load("exp1")
    assert len(logged_ids(store)) == 8
    await run_until(fresh, bus, TRIALS - 8)
    final = summary(store)
    assert final.status == ExperimentStatus.DONE and final.trials_by_status() == {"SUCCEEDED": TRIALS}
    assert sorted(logged_ids(store)) == sorted(set(logged_ids(store))) and len(logged_ids(store)) == TRIALS
