"""The submitter service: takes trial.submit work, runs each trial on its backend, reports.

Any number of replicas share the ``tunebus.submit`` work queue. A delivery is acked once the
job is started (never held for a trial's length). A create-only claim blob per trial attempt
makes sure that a redelivered or duplicated submit does not start a second job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.bus import Bus, PermanentError, TransientError
from shared.deployment import deployment_id
from shared.messages import (
    Message,
    Ticket,
    TrialHeartbeat,
    TrialKill,
    TrialStatus,
    TrialStatusChanged,
    TrialSubmit,
)
from shared.records import BadExperimentDocument, require_experiment_doc
from shared.results import (
    SharedStorageAccount,
    SharedStorageError,
    results_account,
    shared_storage_results_url,
)
from shared.sandbox import make_non_dumpable
from shared.service import Running, open_connections
from shared.settings import DEFAULT_SHARED_STORAGE_ENDPOINT
from shared.storage import BlobStore, Layout
from shared.topology import AML_KILL_QUEUE, AML_WATCH_QUEUE, SUBMIT_QUEUE, replica_control_queue

from .backend import Backend, JobRequest, PermanentSubmitError, SubmitError
from .backend_setup import aml_backend, trial_sandbox
from .checkpoints import CheckpointTransfer
from .claims import CLAIM_STALE_SECONDS, Claims
from .code_folders import CodeFolders
from .local import LocalBackend
from .settings import SubmitterSettings
from .trial_env import TrialIdentity, sas_lifetime

__all__ = ["Submitter", "SubmitterSettings", "start"]

#: Experiments a replica keeps loaded (config, code folder, results account), least recently used out.
MAX_CACHED_EXPERIMENTS = 256

log = logging.getLogger("tunebus.submitter")


@dataclass
class _Experiment:
    config: dict[str, Any]
    code_dir: Path | None
    shared_storage: SharedStorageAccount | None  # where trials write metrics; None: the deployment's
    results_store: BlobStore | None = None  # on the sharedStorage container, opened on first use


class Submitter:
    """Routes jobs to backends; keeps per-experiment code and SAS URLs cached."""

    def __init__(self, bus: Bus, store: BlobStore, work_dir: Path, replica: str, *,
                 shared_storage_endpoint: str = DEFAULT_SHARED_STORAGE_ENDPOINT,
                 log_max_bytes: int = 4 << 20) -> None:
        self.bus = bus
        self.log_max_bytes = log_max_bytes
        self.store = store
        self.replica = replica
        self.shared_storage_endpoint = shared_storage_endpoint  # template, {account} for the name
        self.backends: dict[str, Backend] = {}
        self.claims = Claims(store, replica)
        self.code = CodeFolders(work_dir, replica)
        self._submitting: Counter[str] = Counter()  # experiment -> submissions in progress here
        self._unused_code: set[str] = set()  # experiments left the cache whose folder is still here
        # The experiments whose trials came here lately (least recently used first): bounded,
        # so a long-lived replica does not keep every experiment it ever ran.
        self._experiments: OrderedDict[str, _Experiment] = OrderedDict()
        self._loading: dict[str, asyncio.Lock] = {}

    async def report(self, msg: TrialStatusChanged | TrialHeartbeat) -> None:
        await self.bus.publish(msg)

    async def upload_logs(self, who: TrialIdentity, log_dir: Path) -> None:
        """Upload a finished local trial's stdout and stderr (in ``log_dir``): their last
        ``log_max_bytes`` each, in blocks, so memory stays bounded whatever their size."""
        layout = Layout(who.experiment_id)
        for stream in ("stdout", "stderr"):
            path = log_dir / f"{stream}.log"
            if path.exists() and path.stat().st_size:
                skipped = await self.store.upload_file_tail(
                    layout.log_blob(who.trial_id, stream, who.attempt), path,
                    max_bytes=self.log_max_bytes, content_type="text/plain")
                if skipped:
                    log.info("trial %s/%s: its %s was cut to its last %d bytes (%d left out)",
                             who.experiment_id, who.trial_id, stream, self.log_max_bytes, skipped)

    # ------------------------------------------------------------------ experiments

    async def _experiment(self, experiment_id: str) -> _Experiment:
        cached = self._experiments.get(experiment_id)
        if cached is not None:
            self._experiments.move_to_end(experiment_id)
            return cached
        lock = self._loading.setdefault(experiment_id, asyncio.Lock())
        try:
            async with lock:
                if experiment_id in self._experiments:
                    return self._experiments[experiment_id]
                loaded = await self._load_experiment(experiment_id)
        finally:
            if not lock.locked():
                self._loading.pop(experiment_id, None)
        self._experiments[experiment_id] = loaded
        while len(self._experiments) > MAX_CACHED_EXPERIMENTS:
            evicted_id, evicted = self._experiments.popitem(last=False)
            if evicted.results_store is not None:
                # A call still in flight on it reopens its session (BlobStore does on use).
                await evicted.results_store.close()
            if evicted.code_dir is not None:
                self._unused_code.add(evicted_id)
        await self._remove_unused_code()
        return loaded

    async def _remove_unused_code(self) -> None:
        """Remove the code folders of experiments no longer loaded, unless a trial of theirs
        runs here or is being submitted (it is tried again at the next eviction)."""
        if not self._unused_code:
            return
        busy = {e for backend in self.backends.values() for e in backend.running()}
        busy |= self._submitting.keys() | self._experiments.keys()
        for experiment_id in sorted(self._unused_code - busy):
            await self.code.remove(experiment_id)
            self._unused_code.discard(experiment_id)

    async def _load_experiment(self, experiment_id: str) -> _Experiment:
        """An experiment's config, unpacked code and results account, from storage."""
        try:
            doc = await require_experiment_doc(self.store, experiment_id)
        except BadExperimentDocument as exc:
            raise PermanentError(str(exc)) from None
        config = doc.config
        code_dir = await self._unpack_code(experiment_id, doc.code_blob)
        # Raises SharedStorageError when the sharedStorage has no key to sign with.
        account = await results_account(self.store, experiment_id, config,
                                        endpoint_template=self.shared_storage_endpoint)
        if account is not None:
            log.info("experiment %s: trials write metrics to sharedStorage %s", experiment_id,
                     account.container_url)
        return _Experiment(config, code_dir, account)

    async def _results_url(self, experiment: _Experiment, who: TrialIdentity) -> str:
        """The attempt's results credential: its results blob, created now (empty) if it is not
        there yet, and its URL with an append-only SAS scoped to that blob alone. Made per
        attempt (signing is local and cheap), so that it lives for this trial's time limit plus
        a margin however long the experiment runs."""
        path = Layout(who.experiment_id).results_blob(who.trial_id, who.attempt)
        if experiment.shared_storage is None:
            await self.store.create_append_blob(path)
        else:
            if experiment.results_store is None:
                experiment.results_store = experiment.shared_storage.open_store()
            await experiment.results_store.create_append_blob(path)
        return self._results_sas_url(experiment, path)

    def _results_sas_url(self, experiment: _Experiment, path: str) -> str:
        """The URL of results blob ``path`` with its append-only SAS (signing only, no I/O)."""
        lifetime = sas_lifetime(experiment.config)
        if experiment.shared_storage is None:
            return self.store.results_sas_url(path, lifetime)
        return shared_storage_results_url(experiment.shared_storage, path, lifetime)

    async def close(self) -> None:
        """Close the stores opened on experiments' sharedStorage accounts; remove this replica's
        code folders (its backends are closed first: no trial of it runs any more)."""
        for experiment in self._experiments.values():
            if experiment.results_store is not None:
                await experiment.results_store.close()
        await self.code.close()

    async def _unpack_code(self, experiment_id: str, code_blob: str | None) -> Path | None:
        if not code_blob:
            return None
        dest = self.code.folder(experiment_id)
        if dest.exists():
            return dest
        data = await self.store.read_bytes(code_blob)
        if data is None:
            raise PermanentError(f"code archive {code_blob} is missing")
        return await self.code.unpack(experiment_id, data)

    # ------------------------------------------------------------------ handlers

    async def on_submit(self, msg: TrialSubmit) -> None:
        self._submitting[msg.experiment_id] += 1
        try:
            await self._submit(msg)
        finally:
            self._submitting[msg.experiment_id] -= 1
            if not self._submitting[msg.experiment_id]:
                del self._submitting[msg.experiment_id]

    async def _submit(self, msg: TrialSubmit) -> None:
        try:
            experiment = await self._experiment(msg.experiment_id)
        except SharedStorageError as exc:  # no trial of it can report metrics: fail, say why
            await self._report_failed(msg, f"sharedStorage: {exc}")
            return
        platform = str((experiment.config.get("trainingService") or {}).get("platform", "local"))
        backend = self.backends.get(platform)
        if backend is None:  # the trial must end, saying why (a dead letter would leave it hanging)
            why = " (TUNEBUS_LOCAL_TRIALS=0)" if platform == "local" else ""
            await self._report_failed(msg, f"this deployment runs no {platform!r} trials{why}")
            return
        # AML submissions are idempotent (a fixed run id per attempt): a claim left "starting" by
        # a replica that died is taken over at once, before the delivery limit dead-letters it.
        stale_after = getattr(backend, "claim_stale_seconds", CLAIM_STALE_SECONDS)
        reruns = bool(getattr(backend, "adopts_runs", False))
        etag: str | None = None
        if msg.resubmit and reruns:
            # The dispatcher heard nothing of the run for long (its watch ticket was lost):
            # submitting again finds the run by its fixed id and watches it anew.
            log.info("trial %s/%s attempt %d: sent again; adopting its run", msg.experiment_id,
                     msg.trial_id, msg.attempt)
        else:
            claim = await self.claims.claim(msg, stale_after, reruns=reruns)
            if claim.outcome == "handled":
                log.info("trial %s/%s attempt %d is already running elsewhere", msg.experiment_id,
                         msg.trial_id, msg.attempt)
                return
            if claim.outcome == "abandoned":
                await self.report(TrialStatusChanged(
                    message_id=f"{msg.experiment_id}-{msg.trial_id}-{msg.attempt}-abandoned",
                    experiment_id=msg.experiment_id, trial_id=msg.trial_id, parameter_id=msg.sequence_id,
                    attempt=msg.attempt, status=TrialStatus.FAILED, lost=True,
                    error=f"lost: its submitter replica {claim.previous} stopped while starting or "
                          f"running it"))
                return
            etag = claim.etag
        who = TrialIdentity(msg.experiment_id, msg.trial_id, msg.sequence_id, msg.attempt)
        try:
            job = JobRequest(who, msg.parameters, experiment.config, experiment.code_dir,
                             await self._results_url(experiment, who))
            await backend.submit(job)  # raises only when it started nothing
        except PermanentSubmitError as exc:
            await self._report_failed(msg, f"submission failed: {exc}")
        except BaseException as exc:
            if etag is not None:
                await asyncio.shield(self.claims.release(msg, etag))
            if isinstance(exc, SubmitError):
                raise TransientError(str(exc)) from exc
            raise
        await self.claims.mark_started(msg, etag, backend)

    async def _report_failed(self, msg: TrialSubmit, error: str) -> None:
        await self.report(TrialStatusChanged(experiment_id=msg.experiment_id, trial_id=msg.trial_id,
                                             parameter_id=msg.sequence_id, attempt=msg.attempt,
                                             status=TrialStatus.FAILED, error=error))

    async def on_kill(self, msg: TrialKill) -> None:
        for backend in self.backends.values():
            if await backend.kill(msg.experiment_id, msg.trial_id, msg.status, msg.reason):
                log.info("killed trial %s/%s (%s)", msg.experiment_id, msg.trial_id, msg.reason)

    async def heartbeat_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for backend in self.backends.values():
                for experiment_id, attempts in backend.running().items():
                    with contextlib.suppress(Exception):
                        await self.bus.publish(TrialHeartbeat(
                            experiment_id=experiment_id, trial_ids=list(attempts), attempts=attempts,
                            replica=self.replica))


def _replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def _handlers(submitter: Submitter) -> dict[type[Message], Callable[[Any], Awaitable[None]]]:
    return {TrialSubmit: submitter.on_submit}


async def start(settings: SubmitterSettings) -> Running:
    """Connect, declare, start the backends and consumers; returns its shutdown and health checks."""
    if not make_non_dumpable():
        log.warning("could not make this process non-dumpable: trials of its user may read its /proc files")
    sandbox, sandbox_error = trial_sandbox(settings)
    connections = await open_connections(settings, service="aml-submitter")
    bus, store = connections.bus, connections.store
    replica = _replica_name()
    work_dir = Path(settings.work_dir)
    submitter = Submitter(bus, store, work_dir, replica,
                          shared_storage_endpoint=settings.shared_storage_endpoint,
                          log_max_bytes=settings.log_max_bytes)
    await asyncio.to_thread(submitter.code.start)
    if settings.local_trials:
        local = LocalBackend(work_dir, submitter.report, submitter.upload_logs, sandbox=sandbox,
                             sandbox_error=sandbox_error, checkpoints=CheckpointTransfer(store))
        submitter.backends["local"] = local
        log.info("local trials run %s", f"as user {sandbox.user.name}" if sandbox and sandbox.user
                 else "as this process's user (not root)" if sandbox else f"never: {sandbox_error}")
    aml = aml_backend(settings, submitter.report, store, bus,
                      await deployment_id(store, settings.deployment_id), sandbox)
    await aml.warm_up()
    submitter.backends["aml"] = aml
    await bus.consume(replica_control_queue(replica), {TrialKill: submitter.on_kill}, concurrency=16)
    # AML runs are watched and cancelled by whichever replica takes the ticket or the kill.
    await bus.consume(AML_WATCH_QUEUE, {Ticket: aml.on_watch}, concurrency=2 * settings.aml_poll_threads)
    await bus.consume(AML_KILL_QUEUE, {TrialKill: aml.on_kill}, concurrency=settings.aml_poll_threads)
    await bus.consume(SUBMIT_QUEUE, _handlers(submitter), concurrency=settings.max_jobs)
    beats = asyncio.create_task(submitter.heartbeat_forever(settings.heartbeat_seconds))
    log.info("submitter %s consuming %s (backends: %s)", replica, SUBMIT_QUEUE.name,
             ", ".join(submitter.backends))

    async def shutdown() -> None:
        beats.cancel()
        await connections.close(*submitter.backends.values(), submitter)

    return connections.running(shutdown)
