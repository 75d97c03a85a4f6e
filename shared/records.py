"""Stored records' one home (with :mod:`shared.state` for the summary): the ended-trial log,
where a trial's record goes once it has ended (its path, model :class:`shared.state.TrialRecord`,
one JSON line each, reads and writes), and ``experiment.json`` (:class:`ExperimentDocument`).

Why: the summary (``state.json``, :class:`shared.state.ExperimentState`) is rewritten on every
change; holding every trial made that O(n²) bytes over an experiment. It now holds only the
active trials; an ended one is appended, once, to ``experiments/<exp>/trials-ended/<chunk>.jsonl``
(append blobs of ``CHUNK_RECORDS`` records each, in the order the trials ended), so bytes written
per trial stay flat and a reader pages through the chunks it needs.

How a trial moves without being lost or counted twice: :func:`retire_ended`. Readers merge the log,
the pending and the active trials (:func:`merge_trials`); parsing and paths are pure, so the CLI's
stdlib client uses them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.layout import Layout
from shared.state import ExperimentState, TrialRecord, better_trial

if TYPE_CHECKING:
    from shared.storage import BlobStore

__all__ = [
    "CHUNK_RECORDS",
    "MAX_APPEND_BYTES",
    "BadExperimentDocument",
    "ExperimentDocument",
    "append_pending",
    "chunk_count",
    "chunk_of",
    "chunk_path",
    "chunks_for_last",
    "encode_records",
    "full_view",
    "last_ended",
    "merge_trials",
    "parse_chunk",
    "read_all_trials",
    "read_ended",
    "read_ended_chunk",
    "read_experiment_doc",
    "read_full_state",
    "read_summary",
    "require_experiment_doc",
    "retire_ended",
    "write_experiment_doc",
]

#: Records per chunk of the ended log: a reader's page (and the most one dedupe read covers).
CHUNK_RECORDS = 200
#: One append block's bound (Azure allows 4 MiB; a record's text fields are bounded well below).
MAX_APPEND_BYTES = 3 * 1024 * 1024


def chunk_path(experiment_id: str, chunk: int) -> str:
    """The blob of the ended log's chunk ``chunk`` (0-based)."""
    return Layout(experiment_id).ended_chunk(chunk)


def chunk_of(position: int) -> int:
    """The chunk that holds log position ``position``."""
    return position // CHUNK_RECORDS


def chunk_count(state: ExperimentState) -> int:
    """How many chunks a reader of ``state`` may find (pending records may already be appended)."""
    last = state.ended_logged + len(state.pending_ended)
    return 0 if last == 0 else chunk_of(last - 1) + 1


# ---------------------------------------------------------------- pure: moving and parsing


def retire_ended(state: ExperimentState) -> list[TrialRecord]:
    """Move ``state``'s ended trials to ``pending_ended``, counted; returns the ones moved.

    How a trial moves without being lost or counted twice (the dispatcher, the log's one writer):

    1. :func:`retire_ended` (pure) moves the ended trials out of ``state.trials`` into
       ``state.pending_ended``, counting each in ``ended_counts``, ``best`` as it moves (it can move
       only once: it is no longer in ``trials``).
    2. The summary is written (ETag-conditional) with ``pending_ended`` in it: from here the move is
       durable, exactly like the outbox. Pending record *i* belongs at log position
       ``ended_logged + i``, in chunk ``position // CHUNK_RECORDS``.
    3. :func:`append_pending` appends them (one append block per chunk: a chunk holds all of one
       append or none of it), then ``ended_logged`` grows and ``pending_ended`` empties in memory;
       the next summary write records that.

    A crash between 2 and 3 leaves records in ``pending_ended`` that may already be in the log:
    on load the dispatcher calls :func:`append_pending` with ``known_clean=False``, which first
    reads the chunks they belong in and appends only the trial ids not found there. A record can
    still appear twice in the log (a retried append whose first answer was lost, a dispatcher that
    lost its lease mid-append), so readers dedupe by ``trial_id``, keeping the first. Counts and the
    best trial come from the summary, never from counting the log, so a duplicate line changes no
    number.

    The dispatcher needs no set of ended trial ids: every lifecycle rule treats a trial id it does
    not find exactly like an ended trial (a late report, a repeated end, a kill or heartbeat for it
    is ignored), and a parameter id is never turned into a trial twice (``requested`` guards it).
    """
    ended = [t for t in state.trials.values() if t.ended]
    for trial in sorted(ended, key=lambda t: t.sequence_id):
        del state.trials[trial.trial_id]
        state.pending_ended.append(trial)
        state.ended_counts[trial.status.value] = state.ended_counts.get(trial.status.value, 0) + 1
        state.best = better_trial(state.optimize_mode, [state.best, trial])
    return ended


def encode_records(records: Iterable[TrialRecord]) -> bytes:
    """JSON lines, one record each (the text fields masked, as in the summary)."""
    return b"".join(r.model_dump_json().encode() + b"\n" for r in records)


def parse_chunk(body: bytes, where: str = "ended-log chunk") -> list[TrialRecord]:
    """A chunk's records; ValueError naming ``where`` and the line if one is not a record."""
    records = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(TrialRecord.model_validate_json(line))
        except ValueError as exc:
            raise ValueError(f"{where}, line {number}: not a trial record: {str(exc)[:300]}") from None
    return records


def merge_trials(state: ExperimentState, ended: Iterable[TrialRecord]) -> dict[str, TrialRecord]:
    """Every trial of ``state``, by id: the log's records (``ended``), then the pending and the
    active ones; a trial id seen twice keeps its first record (the log's is the ended one)."""
    merged: dict[str, TrialRecord] = {}
    for trial in (*ended, *state.pending_ended, *state.trials.values()):
        merged.setdefault(trial.trial_id, trial)
    return merged


def _groups(first_position: int, records: Sequence[TrialRecord]) -> list[tuple[int, list[TrialRecord]]]:
    """``records`` from log position ``first_position`` on, grouped by the chunk each belongs in."""
    groups: list[tuple[int, list[TrialRecord]]] = []
    for index, record in enumerate(records):
        chunk = chunk_of(first_position + index)
        if not groups or groups[-1][0] != chunk:
            groups.append((chunk, []))
        groups[-1][1].append(record)
    return groups


def _blocks(records: list[TrialRecord]) -> list[bytes]:
    """``records`` encoded, in as few append blocks within MAX_APPEND_BYTES as they fit."""
    blocks: list[bytes] = []
    current = b""
    for record in records:
        line = encode_records([record])
        if current and len(current) + len(line) > MAX_APPEND_BYTES:
            blocks.append(current)
            current = b""
        current += line
    return [*blocks, current] if current else blocks


def chunks_for_last(state: ExperimentState, last: int) -> range:
    """The chunks that hold the ``last`` trials to end (before the summary's pending ones)."""
    if last < 0:
        raise ValueError(f"last must be 0 or more, not {last}")
    end = chunk_count(state)
    wanted = max(last - len(state.pending_ended), 0)
    return range(end, end) if wanted == 0 else range(chunk_of(max(state.ended_logged - wanted, 0)), end)


def last_ended(state: ExperimentState, ended: Iterable[TrialRecord], last: int) -> list[TrialRecord]:
    """The ``last`` trials to end (the log's ``ended`` records in order, then the pending ones),
    deduped, oldest first."""
    seen: dict[str, TrialRecord] = {}
    for trial in (*ended, *state.pending_ended):
        seen.setdefault(trial.trial_id, trial)
    return list(seen.values())[-last:] if last else []


# ---------------------------------------------------------------- I/O


async def read_ended_chunk(store: BlobStore, experiment_id: str, chunk: int) -> list[TrialRecord]:
    """One chunk's records (none if it does not exist), as stored: duplicates possible."""
    path = chunk_path(experiment_id, chunk)
    body = await store.read_bytes(path)
    return [] if body is None else parse_chunk(body, path)


async def append_pending(store: BlobStore, state: ExperimentState, *, known_clean: bool = True) -> int:
    """Append ``state.pending_ended`` to the log, then count them in ``ended_logged`` and empty
    the list (in memory: the caller's next summary write records it). Returns how many moved.

    ``known_clean``: this process appended nothing of these records before (it has just written
    them as pending). Otherwise (a load after a crash, a failed earlier try) the chunks they
    belong in are read first and only the trial ids not there are appended.
    """
    pending = list(state.pending_ended)
    if not pending:
        return 0
    for chunk, records in _groups(state.ended_logged, pending):
        path = chunk_path(state.experiment_id, chunk)
        if not known_clean:
            there = {r.trial_id for r in await read_ended_chunk(store, state.experiment_id, chunk)}
            records = [r for r in records if r.trial_id not in there]
        if not records:
            continue
        # A chunk is created by the append of its first record; after a crash or a failed try
        # (not known clean) it may not have been: creating is a no-op where it exists.
        if not known_clean or chunk * CHUNK_RECORDS >= state.ended_logged:
            await store.create_append_blob(path)
        for block in _blocks(records):
            await store.append_block(path, block)
    state.ended_logged += len(pending)
    del state.pending_ended[:len(pending)]
    return len(pending)


async def read_ended(store: BlobStore, state: ExperimentState) -> list[TrialRecord]:
    """Every record of the log of the experiment whose summary is ``state``, as stored (in the
    order the trials ended; duplicates possible): reads every chunk."""
    ended: list[TrialRecord] = []
    for chunk in range(chunk_count(state)):
        ended += await read_ended_chunk(store, state.experiment_id, chunk)
    return ended


async def read_all_trials(store: BlobStore, state: ExperimentState) -> dict[str, TrialRecord]:
    """Every trial of the experiment whose summary is ``state``, by id (reads every chunk: for
    the readers that need the whole history, like a tuner rebuilding its search)."""
    return merge_trials(state, await read_ended(store, state))


def full_view(state: ExperimentState, ended: Iterable[TrialRecord]) -> ExperimentState:
    """``state`` with every trial in ``trials`` (the log's ``ended`` merged in) and the ended
    counters emptied, so that its counts, best and ``by_sequence`` cover every trial: for the
    readers that show or learn from the whole history (trial ls, the dashboard's table, a
    tuner's rebuild). Never written back."""
    return state.model_copy(update={
        "trials": merge_trials(state, ended), "ended_counts": {}, "best": None, "pending_ended": [],
        "ended_logged": 0})


async def read_summary(store: BlobStore, experiment_id: str) -> ExperimentState | None:
    """The experiment's summary (``state.json``), or None before its start."""
    found = await store.read_bytes(Layout(experiment_id).state_doc)
    return None if found is None else ExperimentState.model_validate_json(found)


async def read_full_state(store: BlobStore, experiment_id: str) -> ExperimentState | None:
    """:func:`full_view` of the stored experiment (reads every chunk of its log)."""
    state = await read_summary(store, experiment_id)
    if state is None:
        return None
    return full_view(state, await read_ended(store, state))


# ---------------------------------------------------------------- experiment.json


class ExperimentDocument(BaseModel):
    """``experiments/<exp>/experiment.json``: written once by the dispatcher when it starts the
    experiment (before anything of it is published), read by every service."""

    model_config = ConfigDict(extra="ignore")

    experiment_id: str | None = None
    config: dict[str, Any] = Field(description="The NNI config in wire form (no secret).")
    code_blob: str | None = Field(default=None, description="The trial code archive's blob.")
    algorithm_code: dict[str, str] = Field(
        default_factory=dict, description="A custom tuner's / assessor's code archive, by role.")
    seed: int | None = None
    created_at: datetime | None = None


class BadExperimentDocument(ValueError):
    """A stored ``experiment.json`` that does not validate; the message names the experiment."""


async def read_experiment_doc(store: BlobStore, experiment_id: str) -> ExperimentDocument | None:
    """The experiment's ``experiment.json``; None before the dispatcher wrote it (or after a
    rejected start); BadExperimentDocument if it is not one."""
    found = await store.read_json(Layout(experiment_id).experiment_doc)
    if found is None:
        return None
    try:
        return ExperimentDocument.model_validate(found[0])
    except ValidationError as exc:
        raise BadExperimentDocument(f"experiment.json of {experiment_id}: {str(exc)[:500]}") from None


async def require_experiment_doc(store: BlobStore, experiment_id: str) -> ExperimentDocument:
    """The experiment's ``experiment.json``, which every message of a started experiment follows
    (the dispatcher writes it before it publishes anything): BadExperimentDocument if missing or bad."""
    doc = await read_experiment_doc(store, experiment_id)
    if doc is None:
        raise BadExperimentDocument(
            f"unknown experiment {experiment_id!r}: no {Layout(experiment_id).experiment_doc}")
    return doc


async def write_experiment_doc(store: BlobStore, doc: ExperimentDocument) -> None:
    """Write ``experiment.json`` (the dispatcher, once per experiment)."""
    if doc.experiment_id is None:
        raise ValueError("experiment.json needs its experiment_id")
    await store.write_json(Layout(doc.experiment_id).experiment_doc, doc.model_dump(mode="json"))
