"""The dashboard's reads of blob storage, cached by ETag and bounded.

An experiment's summary (``state.json``) is parsed once per change: it is read again with
``If-None-Match`` (a 304 carries no body) at most once per ``refresh_seconds`` however many
pages watch it, and only while someone asks: nothing is read when nobody watches. The trials
table shows every trial (sorted and filtered by any column), so the full state adds the ended
log's chunks (:mod:`shared.records`): a chunk that is full is read once and kept, so a refresh
reads the summary and the log's last chunk, whatever the experiment's size. A trial's
own blobs (its log, its results) are written by untrusted code: read as bounded ranges.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared import records
from shared.results import SharedStorageError, results_account
from shared.results_records import ParsedMetric, ResultsLimits, parse_results
from shared.secrets_mask import mask_secrets
from shared.settings import DEFAULT_SHARED_STORAGE_ENDPOINT
from shared.state import ExperimentState, TrialRecord
from shared.storage import BlobStore, ContainerNotFoundError, Layout

from .views import ExperimentSummary, TrialIndex

__all__ = ["CachedState", "CachedSummary", "ExperimentReader", "LogTail"]

#: Experiment summaries kept for the list (a few hundred bytes each).
MAX_SUMMARIES = 10_000
#: Ended trial attempts whose parsed results are kept (the curves of the best are asked often).
MAX_ENDED_RESULTS = 512
#: Full chunks of ended-trial logs kept parsed (200 records each).
MAX_CHUNKS = 1024


@dataclass
class CachedState:
    """One parsed state document and what is derived from it (built on first use)."""

    etag: str
    state: ExperimentState
    checked: float  # time.monotonic() of the last read that found this etag
    _index: TrialIndex | None = field(default=None, repr=False)

    _summary: ExperimentSummary | None = field(default=None, repr=False)

    @property
    def index(self) -> TrialIndex:
        if self._index is None:
            self._index = TrialIndex.build(self.state)
        return self._index

    @property
    def summary(self) -> ExperimentSummary:
        if self._summary is None:
            self._summary = ExperimentSummary.of(self.state)
        return self._summary


@dataclass
class CachedSummary:
    """An experiment's summary as of the state document with ``etag``."""

    etag: str
    summary: ExperimentSummary
    checked: float


_Cached = TypeVar("_Cached", CachedState, CachedSummary)


@dataclass(frozen=True)
class LogTail:
    """The end of a trial's log: its text (secrets masked), whole size, and bytes left out."""

    text: str
    size: int
    skipped: int


class ExperimentReader:
    """Reads experiments from the deployment's container (and trial results from an
    experiment's sharedStorage), keeping the last ``capacity`` states parsed."""

    def __init__(self, store: BlobStore, *, refresh_seconds: float = 0.5, capacity: int = 32,
                 endpoint_template: str = DEFAULT_SHARED_STORAGE_ENDPOINT) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.capacity = capacity
        self.endpoint_template = endpoint_template
        self._states: OrderedDict[str, CachedState] = OrderedDict()
        self._summaries: OrderedDict[str, CachedSummary] = OrderedDict()
        self._ended_results: OrderedDict[tuple[str, str, int], tuple[list[ParsedMetric], list[str]]] = (
            OrderedDict())
        self._locks: dict[str, asyncio.Lock] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._results_stores: dict[str, BlobStore] = {}
        self._ids: tuple[float, list[str]] | None = None
        self._chunks: OrderedDict[tuple[str, int], list[TrialRecord]] = OrderedDict()

    async def close(self) -> None:
        stores = list(self._results_stores.values())
        self._results_stores.clear()
        for store in stores:
            await store.close()

    # ------------------------------------------------------------ experiments

    async def experiment_ids(self) -> list[str]:
        """Every experiment folder (one level of listing), re-listed at most every 2 s."""
        if self._ids is not None and time.monotonic() - self._ids[0] < 2.0:
            return self._ids[1]
        try:
            names = await self.store.list("experiments/", delimiter="/")
        except ContainerNotFoundError:
            names = []
        ids = sorted(n.removeprefix("experiments/").rstrip("/") for n in names if n.endswith("/"))
        self._ids = (time.monotonic(), [i for i in ids if i])
        return self._ids[1]

    async def state(self, experiment_id: str) -> CachedState | None:
        """The experiment's state as of at most ``refresh_seconds`` ago; None before its start."""
        async def parsed(etag: str, summary: ExperimentState) -> CachedState:
            state = records.full_view(summary, await self._ended(summary))
            return CachedState(etag, state, time.monotonic())

        return await self._cached_read(self._states, self.capacity, experiment_id, parsed)

    async def _ended(self, summary: ExperimentState) -> list[TrialRecord]:
        """The ended log's records; full chunks (which only a duplicate could still change,
        and readers dedupe) from the cache after their first read."""
        full = records.chunk_of(summary.ended_logged)
        ended: list[TrialRecord] = []
        for chunk in range(records.chunk_count(summary)):
            key = (summary.experiment_id, chunk)
            found = self._chunks.get(key)
            if found is None:
                path = Layout(summary.experiment_id).ended_chunk(chunk)
                body = await self.store.read_bytes(path)
                # 200 records take a while to parse: off the event loop.
                found = [] if body is None else await asyncio.to_thread(records.parse_chunk, body, path)
                if chunk < full:
                    self._chunks[key] = found
                    while len(self._chunks) > MAX_CHUNKS:
                        self._chunks.popitem(last=False)
            ended += found
        return ended

    async def summary(self, experiment_id: str) -> CachedSummary | None:
        """The experiment's summary (as fresh as :meth:`state`); None before its start. Kept for
        many more experiments than whole states are: the list reads every one of them."""
        full = self._states.get(experiment_id)
        if full is not None and self._fresh(full.checked):
            return CachedSummary(full.etag, full.summary, full.checked)

        async def parsed(etag: str, state: ExperimentState) -> CachedSummary:
            return CachedSummary(etag, ExperimentSummary.of(state), time.monotonic())

        return await self._cached_read(self._summaries, MAX_SUMMARIES, experiment_id, parsed)

    async def _cached_read(self, cache: OrderedDict[str, _Cached], capacity: int, experiment_id: str,
                           parsed: Callable[[str, ExperimentState], Awaitable[_Cached]]) -> _Cached | None:
        """What ``cache`` holds of the experiment's state document, read again (with its ETag:
        a 304 costs no parse) when older than ``refresh_seconds``; one read at a time per
        experiment, the newest ``capacity`` kept."""
        cached = cache.get(experiment_id)
        if cached is not None and self._fresh(cached.checked):
            return cached
        async with self._locks.setdefault(experiment_id, asyncio.Lock()):
            cached = cache.get(experiment_id)
            if cached is not None and self._fresh(cached.checked):
                return cached  # another viewer's read, while this one waited
            path = Layout(experiment_id).state_doc
            found = await self.store.read_document_if_changed(path, None if cached is None else cached.etag)
            if found is None:
                cache.pop(experiment_id, None)
                return None
            body, etag = found
            if body is None and cached is not None:
                cached.checked = time.monotonic()
                return cached
            assert body is not None
            state = await asyncio.to_thread(ExperimentState.model_validate_json, body)
            fresh = await parsed(etag, state)
            cache[experiment_id] = fresh
            cache.move_to_end(experiment_id)
            while len(cache) > capacity:
                cache.popitem(last=False)
            return fresh

    def _fresh(self, checked: float) -> bool:
        return time.monotonic() - checked < self.refresh_seconds

    async def config(self, experiment_id: str) -> dict[str, Any] | None:
        """The experiment file (wire form) from ``experiment.json``; written once, so kept."""
        if experiment_id in self._configs:
            return self._configs[experiment_id]
        try:
            doc = await records.read_experiment_doc(self.store, experiment_id)
        except records.BadExperimentDocument:
            return None  # shown as an experiment without its config
        if doc is None:
            return None
        config = doc.config
        if len(self._configs) >= 4 * self.capacity:
            self._configs.pop(next(iter(self._configs)))
        self._configs[experiment_id] = config
        return config

    async def exists(self, experiment_id: str) -> bool:
        """Whether anything is stored for the experiment (it may not have started yet)."""
        if experiment_id in await self.experiment_ids():
            return True
        self._ids = None  # created since the last listing?
        return experiment_id in await self.experiment_ids()

    # ------------------------------------------------------------ a trial's own blobs

    async def log_tail(self, experiment_id: str, trial_id: str, stream: str, attempt: int,
                       max_bytes: int) -> LogTail | None:
        """The last ``max_bytes`` of a trial's stdout or stderr log; None if none was uploaded."""
        path = Layout(experiment_id).log_blob(trial_id, stream, attempt)
        head = await self.store.read_range(path, 0, max_bytes)
        if head is None:
            return None
        data, size = head
        skipped = max(0, size - max_bytes)
        if skipped:
            tail = await self.store.read_range(path, skipped, max_bytes)
            data = b"" if tail is None else tail[0]
        return LogTail(mask_secrets(data.decode("utf-8", errors="replace")), size, skipped)

    async def metrics(self, experiment_id: str, trial_id: str, attempt: int, max_bytes: int, *,
                      ended: bool = False) -> tuple[list[ParsedMetric], list[str]]:
        """What the attempt reported, as the ingestor reads it (problems named, never raised),
        from at most ``max_bytes`` of its results blob. An ``ended`` attempt's results no longer
        change: they are kept (the last :data:`MAX_ENDED_RESULTS`), not read again on every poll."""
        key = (experiment_id, trial_id, attempt)
        if ended and key in self._ended_results:
            self._ended_results.move_to_end(key)
            return self._ended_results[key]
        found = await self._read_metrics(experiment_id, trial_id, attempt, max_bytes)
        if ended:
            self._ended_results[key] = found
            while len(self._ended_results) > MAX_ENDED_RESULTS:
                self._ended_results.popitem(last=False)
        return found

    async def _read_metrics(self, experiment_id: str, trial_id: str, attempt: int,
                            max_bytes: int) -> tuple[list[ParsedMetric], list[str]]:
        store = await self._results_store(experiment_id)
        found = await store.read_range(Layout(experiment_id).results_blob(trial_id, attempt), 0, max_bytes)
        if found is None:
            return [], []
        data, size = found
        read = parse_results(data, ResultsLimits(max_bytes=max_bytes), complete=size <= max_bytes)
        problems = read.problems + ([f"only the first {max_bytes} bytes of {size} were read"]
                                    if size > max_bytes else [])
        return read.metrics, problems

    async def _results_store(self, experiment_id: str) -> BlobStore:
        if experiment_id in self._results_stores:
            return self._results_stores[experiment_id]
        config = await self.config(experiment_id) or {}
        try:
            account = await results_account(self.store, experiment_id, config,
                                            endpoint_template=self.endpoint_template)
        except SharedStorageError:
            account = None  # its trials could not have written there either
        if account is None:
            return self.store
        store = account.open_store()
        self._results_stores[experiment_id] = store
        if len(self._results_stores) > self.capacity:
            oldest = next(iter(self._results_stores))
            await self._results_stores.pop(oldest).close()
        return store
