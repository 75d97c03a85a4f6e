"""The store each experiment's metrics are read from: the deployment's, or its sharedStorage.

One :class:`~shared.storage.BlobStore` per experiment with an AzureBlob ``sharedStorage`` is
kept open, the least recently used closed beyond ``capacity`` (the ingestor hears no
experiment's end; a closed one is simply opened again when its trials report). A store is
closed only once no handler uses it any more.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from shared.bus import PermanentError
from shared.records import BadExperimentDocument, require_experiment_doc
from shared.results import SharedStorageError, results_account
from shared.settings import DEFAULT_SHARED_STORAGE_ENDPOINT
from shared.storage import BlobStore

__all__ = ["ResultsStores"]

log = logging.getLogger("tunebus.ingestor")


@dataclass
class _Entry:
    store: BlobStore | None  # None: the deployment's store (never closed here)
    live_metrics: bool  # an assessor reads intermediate results while trials run
    local: bool = False  # trials are local processes (their submitter's heartbeats list them)
    users: int = 0
    evicted: bool = False


class ResultsStores:
    """Per-experiment metric stores, opened on first use, closed on eviction or :meth:`close`."""

    def __init__(self, deployment: BlobStore, *, capacity: int = 32,
                 endpoint_template: str = DEFAULT_SHARED_STORAGE_ENDPOINT) -> None:
        self.deployment = deployment
        self.capacity = capacity
        self.endpoint_template = endpoint_template
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def use(self, experiment_id: str) -> AsyncIterator[BlobStore]:
        """The store holding the experiment's metrics, kept open while the block runs.

        Raises :class:`PermanentError` when the experiment is unknown or its sharedStorage
        has no key.
        """
        entry = await self._entry(experiment_id)
        entry.users += 1
        try:
            yield entry.store or self.deployment
        finally:
            entry.users -= 1
            if entry.evicted and entry.users == 0 and entry.store is not None:
                await entry.store.close()

    async def live_metrics(self, experiment_id: str) -> bool:
        """Whether intermediate results must be published while the trial runs (an assessor
        judges them); otherwise they are published with the trial's end, and nobody polls."""
        return (await self._entry(experiment_id)).live_metrics

    async def watched_from_the_start(self, experiment_id: str) -> bool:
        """Whether a trial's watch starts with its RUNNING status: when an assessor judges its
        results, or when it runs on Azure ML (never a matter of seconds). A local trial without
        an assessor is watched once a heartbeat shows it still running: most end sooner."""
        entry = await self._entry(experiment_id)
        return entry.live_metrics or not entry.local

    async def close(self) -> None:
        """Close every store opened here (handlers have stopped)."""
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            if entry.store is not None:
                await entry.store.close()

    async def _entry(self, experiment_id: str) -> _Entry:
        entry = self._entries.get(experiment_id)
        if entry is None:
            async with self._loading.setdefault(experiment_id, asyncio.Lock()):
                entry = self._entries.get(experiment_id)
                if entry is None:
                    entry = await self._open(experiment_id)
                    self._entries[experiment_id] = entry
            self._loading.pop(experiment_id, None)
            for store in self._evict():
                await store.close()
        self._entries.move_to_end(experiment_id)
        return entry

    async def _open(self, experiment_id: str) -> _Entry:
        try:
            doc = await require_experiment_doc(self.deployment, experiment_id)
        except BadExperimentDocument as exc:
            raise PermanentError(str(exc)) from None
        config = doc.config
        live = bool(config.get("assessor"))
        local = (config.get("trainingService") or {}).get("platform", "local") == "local"
        try:
            account = await results_account(self.deployment, experiment_id, config,
                                            endpoint_template=self.endpoint_template)
        except SharedStorageError as exc:
            raise PermanentError(f"sharedStorage of {experiment_id}: {exc}") from exc
        if account is None:
            return _Entry(None, live, local)
        log.info("experiment %s: reading metrics from sharedStorage %s", experiment_id, account.container_url)
        return _Entry(account.open_store(), live, local)

    def _evict(self) -> list[BlobStore]:
        """Forget the least recently used beyond capacity; the stores no handler uses, to close."""
        idle: list[BlobStore] = []
        while len(self._entries) > self.capacity:
            _, oldest = self._entries.popitem(last=False)
            oldest.evicted = True  # one still in use is closed by its last user
            if oldest.users == 0 and oldest.store is not None:
                idle.append(oldest.store)
        return idle
