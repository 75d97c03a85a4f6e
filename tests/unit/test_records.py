"""The ended-trial log (shared.records): trials move out of the summary once, counted once, and a
crash at any step between the summary write and the appends loses none and counts none twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import records
from shared.messages import TrialStatus
from shared.records import (
    CHUNK_RECORDS,
    append_pending,
    chunk_count,
    chunk_path,
    merge_trials,
    parse_chunk,
    read_all_trials,
    retire_ended,
)
from shared.state import ExperimentState, TrialRecord, best_trial

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class AppendBlobs:
    """The part of BlobStore the log uses, in memory; ``fail_after`` appends, it raises."""

    blobs: dict[str, bytes]
    appends = 0
    creates = 0  # create calls, whether or not the blob was there
    fail_after: int | None = None

    async def read_bytes(self, path: str) -> bytes | None:
        return self.blobs.get(path)

    async def create_append_blob(self, path: str) -> bool:
        self.creates += 1
        if path in self.blobs:
            return False
        self.blobs[path] = b""
        return True

    async def append_block(self, path: str, data: bytes) -> None:
        if self.fail_after is not None and self.appends >= self.fail_after:
            raise ConnectionError("storage went away")
        assert path in self.blobs, "append to a blob never created"
        self.blobs[path] += data
        self.appends += 1


class MemoryStore(AppendBlobs):
    def __init__(self) -> None:
        self.blobs = {}


def trial(seq: int, status: TrialStatus = TrialStatus.SUCCEEDED, value: float | None = None) -> TrialRecord:
    return TrialRecord(trial_id=f"t{seq:05d}", sequence_id=seq, parameters={"x": seq}, status=status,
                       final_value=value)


def state_with(*trials: TrialRecord, mode: str = "maximize") -> ExperimentState:
    state = ExperimentState(experiment_id="exp", started_at=NOW, optimize_mode=mode)
    for t in trials:
        state.trials[t.trial_id] = t
        state.trials_created += 1
    return state


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_retire_moves_only_ended_trials_and_counts_each_once() -> None:
    state = state_with(trial(0, value=1.0), trial(1, TrialStatus.RUNNING), trial(2, TrialStatus.FAILED))
    moved = retire_ended(state)
    assert sorted(t.trial_id for t in moved) == ["t00000", "t00002"]
    assert list(state.trials) == ["t00001"]
    assert state.ended_counts == {"SUCCEEDED": 1, "FAILED": 1}
    assert state.trials_by_status() == {"SUCCEEDED": 1, "FAILED": 1, "RUNNING": 1}
    assert retire_ended(state) == []  # nothing left to move: no second count
    assert state.ended_counts == {"SUCCEEDED": 1, "FAILED": 1}
    assert state.trials_created == 3


@pytest.mark.parametrize(("mode", "expected"), [("maximize", "t00001"), ("minimize", "t00002")])
def test_best_trial_survives_the_move(mode: str, expected: str) -> None:
    state = state_with(trial(0, value=0.5), trial(1, value=0.9), trial(2, value=0.1), mode=mode)
    retire_ended(state)
    assert state.trials == {}
    best = best_trial(state)
    assert best is not None and best.trial_id == expected
    assert state.best is not None and state.best.trial_id == expected


def test_best_trial_weighs_the_logs_best_against_active_ones() -> None:
    state = state_with(trial(0, value=0.5))
    retire_ended(state)
    state.trials["t00001"] = trial(1, TrialStatus.SUCCEEDED, value=0.7)  # ended, not yet moved
    best = best_trial(state)
    assert best is not None and best.trial_id == "t00001"


def test_append_then_read_back_every_trial_in_chunks() -> None:
    store = MemoryStore()
    count = CHUNK_RECORDS * 2 + 7
    state = state_with(*(trial(i, value=float(i)) for i in range(count)), trial(count, TrialStatus.RUNNING))
    retire_ended(state)
    assert run(append_pending(store, state)) == count  # type: ignore[arg-type]
    assert state.pending_ended == [] and state.ended_logged == count
    assert chunk_count(state) == 3
    assert sorted(store.blobs) == [chunk_path("exp", c) for c in range(3)]
    assert len(parse_chunk(store.blobs[chunk_path("exp", 0)])) == CHUNK_RECORDS
    everything = run(read_all_trials(store, state))  # type: ignore[arg-type]
    assert len(everything) == count + 1
    assert everything[f"t{count:05d}"].status == TrialStatus.RUNNING


def test_later_moves_continue_in_the_chunk_where_the_last_stopped() -> None:
    store = MemoryStore()
    state = state_with(*(trial(i) for i in range(CHUNK_RECORDS - 1)))
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    for i in range(CHUNK_RECORDS - 1, CHUNK_RECORDS + 2):
        state.trials[f"t{i:05d}"] = trial(i)
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    assert len(parse_chunk(store.blobs[chunk_path("exp", 0)])) == CHUNK_RECORDS
    assert len(parse_chunk(store.blobs[chunk_path("exp", 1)])) == 2


def test_trials_appended_one_at_a_time_create_each_chunk_once() -> None:
    """One append per ended trial: the chunk's blob is created when its first record goes in,
    not tried again before every append (each try is a request that storage refuses)."""
    store = MemoryStore()
    state = state_with()
    for i in range(CHUNK_RECORDS + 5):
        state.trials[f"t{i:05d}"] = trial(i)
        retire_ended(state)
        run(append_pending(store, state))  # type: ignore[arg-type]
    assert store.creates == 2
    assert store.appends == CHUNK_RECORDS + 5
    assert len(parse_chunk(store.blobs[chunk_path("exp", 1)])) == 5


@pytest.mark.parametrize("appends_before_crash", [0, 1, 2])
def test_a_crash_between_summary_write_and_appends_loses_nothing_and_duplicates_nothing(
        appends_before_crash: int) -> None:
    """The summary with pending records was written; the process died after some appends (the
    records straddle two chunks, so two appends). The reloaded summary replays: each trial ends
    up in the log exactly once, and the counts are the summary's (unchanged by the replay)."""
    store = MemoryStore()
    state = state_with(*(trial(i) for i in range(CHUNK_RECORDS - 3)))
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    for i in range(CHUNK_RECORDS - 3, CHUNK_RECORDS + 3):
        state.trials[f"t{i:05d}"] = trial(i, TrialStatus.FAILED)
    retire_ended(state)
    written = state.model_dump_json()  # the durable summary, pending records in it
    store.fail_after = store.appends + appends_before_crash
    if appends_before_crash < 2:
        with pytest.raises(ConnectionError):
            run(append_pending(store, state))  # type: ignore[arg-type]
    else:  # both appends done; the crash comes before the summary records it
        run(append_pending(store, state))  # type: ignore[arg-type]

    store.fail_after = None
    reloaded = ExperimentState.model_validate_json(written)
    assert len(reloaded.pending_ended) == 6
    run(append_pending(store, reloaded, known_clean=False))  # type: ignore[arg-type]
    logged = [r.trial_id for c in range(chunk_count(reloaded))
              for r in parse_chunk(store.blobs.get(chunk_path("exp", c), b""))]
    assert sorted(logged) == [f"t{i:05d}" for i in range(CHUNK_RECORDS + 3)]  # each once
    assert reloaded.ended_counts == {"SUCCEEDED": CHUNK_RECORDS - 3, "FAILED": 6}
    assert reloaded.ended_logged == CHUNK_RECORDS + 3 and reloaded.pending_ended == []


def test_readers_dedupe_a_record_appended_twice_and_see_pending_ones() -> None:
    store = MemoryStore()
    state = state_with(trial(0), trial(1))
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    store.blobs[chunk_path("exp", 0)] += records.encode_records([trial(1)])  # a retried append
    state.trials["t00002"] = trial(2)
    retire_ended(state)  # pending, not appended yet: readers still see it
    everything = run(read_all_trials(store, state))  # type: ignore[arg-type]
    assert sorted(everything) == ["t00000", "t00001", "t00002"]
    assert state.trials_by_status() == {"SUCCEEDED": 3}


def test_an_old_format_document_counts_its_trials_and_migrates_once() -> None:
    old: dict[str, Any] = {
        "experiment_id": "exp", "started_at": NOW.isoformat(), "status": "RUNNING",
        "trials": {t.trial_id: t.model_dump(mode="json") for t in
                   (trial(0, value=2.0), trial(1, TrialStatus.RUNNING), trial(2, TrialStatus.FAILED))},
    }
    state = ExperimentState.model_validate(old)
    assert state.trials_created == 3
    assert state.trials_by_status() == {"SUCCEEDED": 1, "RUNNING": 1, "FAILED": 1}
    before = best_trial(state)
    retire_ended(state)
    store = MemoryStore()
    run(append_pending(store, state, known_clean=False))  # type: ignore[arg-type]
    assert state.trials_by_status() == {"SUCCEEDED": 1, "RUNNING": 1, "FAILED": 1}
    assert best_trial(state) == before
    again = ExperimentState.model_validate(state.model_dump(mode="json"))
    assert again.trials_created == 3  # a new-format document keeps its own count


def test_merge_keeps_the_logs_record_over_a_stale_active_one() -> None:
    state = state_with(trial(0, TrialStatus.RUNNING))  # a reader's older summary
    merged = merge_trials(state, [trial(0, TrialStatus.SUCCEEDED)])
    assert merged["t00000"].status == TrialStatus.SUCCEEDED


def test_a_chunk_line_that_is_not_a_record_is_named() -> None:
    body = records.encode_records([trial(0)]) + b'{"trial_id": 3}\n'
    with pytest.raises(ValueError, match=r"chunk 7, line 2: not a trial record"):
        parse_chunk(body, "chunk 7")


def test_large_pending_sets_split_into_bounded_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "MAX_APPEND_BYTES", 300)
    store = MemoryStore()
    state = state_with(*(trial(i) for i in range(5)))
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    assert store.appends > 1
    assert len(parse_chunk(store.blobs[chunk_path("exp", 0)])) == 5


class CountingClient:
    """The CLI's stdlib client's reads, from a MemoryStore, noting which blobs were read."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.read: list[str] = []

    def get_blob(self, name: str) -> bytes | None:
        self.read.append(name)
        return self.store.blobs.get(name)

    def get_json(self, name: str) -> Any:
        import json

        body = self.get_blob(name)
        return None if body is None else json.loads(body)


def logged_experiment(ended: int, running: int) -> tuple[MemoryStore, ExperimentState]:
    from shared.layout import Layout

    store = MemoryStore()
    state = state_with(*(trial(i, value=float(i)) for i in range(ended)),
                       *(trial(ended + i, TrialStatus.RUNNING) for i in range(running)))
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    state.trials[f"t{ended + running:05d}"] = trial(ended + running, TrialStatus.FAILED)
    state.trials_created += 1
    retire_ended(state)  # one pending, not yet appended
    store.blobs[Layout("exp").state_doc] = state.model_dump_json().encode()
    return store, state


def cli_storage(store: MemoryStore) -> Any:
    from tunebus.cli.storage import _Storage

    storage = _Storage.__new__(_Storage)
    storage.client = CountingClient(store)  # type: ignore[assignment]
    return storage


def test_cli_last_reads_only_the_chunks_holding_the_last_trials() -> None:
    ended = CHUNK_RECORDS * 3 + 10
    store, _ = logged_experiment(ended, running=4)
    storage = cli_storage(store)
    view = run(storage.read_full_state("exp", last=11))
    chunks_read = [n for n in storage.client.read if "/trials-ended/" in n]
    assert chunks_read == [chunk_path("exp", 3)]  # the pending one and the 10 of the last chunk
    ended_ids = sorted(t.trial_id for t in view.trials.values() if t.ended)
    assert ended_ids == [f"t{i:05d}" for i in range(ended - 10, ended)] + [f"t{ended + 4:05d}"]
    assert sum(1 for t in view.trials.values() if not t.ended) == 4
    assert view.trials_by_status() == {"SUCCEEDED": 10, "FAILED": 1, "RUNNING": 4}

    storage = cli_storage(store)
    view = run(storage.read_full_state("exp", last=CHUNK_RECORDS))  # reaches back into chunk 2
    assert [n for n in storage.client.read if "/trials-ended/" in n] == [chunk_path("exp", c) for c in (2, 3)]
    assert sum(1 for t in view.trials.values() if t.ended) == CHUNK_RECORDS

    storage = cli_storage(store)
    everything = run(storage.read_full_state("exp"))
    assert len(everything.trials) == ended + 5 and everything.trials_created == ended + 5


def test_cli_summary_reads_no_chunk_and_counts_every_trial() -> None:
    store, _ = logged_experiment(CHUNK_RECORDS + 5, running=2)
    storage = cli_storage(store)
    state = run(storage.read_state("exp"))
    assert not any("/trials-ended/" in n for n in storage.client.read)
    assert state.trials_by_status() == {"SUCCEEDED": CHUNK_RECORDS + 5, "FAILED": 1, "RUNNING": 2}
    best = best_trial(state)
    assert best is not None and best.sequence_id == CHUNK_RECORDS + 4


class DashboardStore(MemoryStore):
    """MemoryStore with the conditional read the dashboard makes; counts chunk reads."""

    def __init__(self) -> None:
        super().__init__()
        self.chunk_reads: list[str] = []

    async def read_bytes(self, path: str) -> bytes | None:
        if "/trials-ended/" in path:
            self.chunk_reads.append(path)
        return self.blobs.get(path)

    async def read_document_if_changed(self, path: str, etag: str | None) -> tuple[bytes | None, str] | None:
        body = self.blobs.get(path)
        if body is None:
            return None
        tag = str(hash(body))
        return (None, tag) if tag == etag else (body, tag)


def test_the_dashboard_shows_every_trial_and_reads_a_full_chunk_once() -> None:
    from services.dashboard.reader import ExperimentReader
    from shared.layout import Layout

    store = DashboardStore()
    state = state_with(*(trial(i, value=float(i)) for i in range(CHUNK_RECORDS + 20)),
                       trial(CHUNK_RECORDS + 20, TrialStatus.RUNNING))
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    store.blobs[Layout("exp").state_doc] = state.model_dump_json().encode()
    reader = ExperimentReader(store, refresh_seconds=0.0)  # type: ignore[arg-type]

    cached = run(reader.state("exp"))
    assert cached is not None and len(cached.index.trials) == CHUNK_RECORDS + 21
    assert cached.summary.trials_total == CHUNK_RECORDS + 21
    assert cached.summary.counts == {"SUCCEEDED": CHUNK_RECORDS + 20, "RUNNING": 1}
    assert cached.summary.best_trial == f"t{CHUNK_RECORDS + 19:05d}"
    assert store.chunk_reads == [chunk_path("exp", 0), chunk_path("exp", 1)]

    state.trials[f"t{CHUNK_RECORDS + 20:05d}"] = trial(CHUNK_RECORDS + 20, TrialStatus.FAILED)
    retire_ended(state)
    run(append_pending(store, state))  # type: ignore[arg-type]
    store.blobs[Layout("exp").state_doc] = state.model_dump_json().encode()
    store.chunk_reads.clear()
    cached = run(reader.state("exp"))
    assert cached is not None and cached.summary.counts == {"SUCCEEDED": CHUNK_RECORDS + 20, "FAILED": 1}
    assert store.chunk_reads == [chunk_path("exp", 1)]  # the full chunk 0 came from the cache
