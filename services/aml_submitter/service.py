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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from shared.bus import Bus, PermanentError, TransientError
from shared.messages import (
    Message,
    Ticket,
    TrialHeartbeat,
    TrialKill,
    TrialStatus,
    TrialStatusChanged,
    TrialSubmit,
)
from shared.results import (
    SharedStorageAccount,
    SharedStorageError,
    results_account,
    shared_storage_metrics_url,
)
from shared.service import Running
from shared.settings import DEFAULT_SHARED_STORAGE_ENDPOINT, CommonSettings
from shared.storage import BlobStore, ConcurrentWriteError, Layout
from shared.topology import AML_KILL_QUEUE, AML_WATCH_QUEUE, SUBMIT_QUEUE, replica_control_queue

from .aml.backend import AmlBackend, AmlOptions, azureml_api, standin_api
from .aml.standin import StandinSettings
from .backend import Backend, JobRequest, PermanentSubmitError, SubmitError
from .local import LocalBackend
from .trial_env import TrialIdentity, sas_lifetime

__all__ = ["Submitter", "SubmitterSettings"]

log = logging.getLogger("tunebus.submitter")

CLAIM_STALE_SECONDS = 10.0  # seconds a claim may stay 'starting' before it is taken over


class SubmitterSettings(CommonSettings):
    """Submitter settings (``TUNEBUS_`` environment variables)."""

    work_dir: str = "/tmp/tunebus-trials"
    # trial.submit deliveries this replica takes at once. Small, so that replicas share the work:
    # AML submissions are serialized per replica (aml_submit_threads); local spawns take ms.
    max_jobs: int = 8
    heartbeat_seconds: float = 5.0
    aml_standin: bool = False  # TUNEBUS_AML_STANDIN=1: run `platform: aml` on the local stand-in
    # azureml-core calls block and are serialized per workspace client: submissions at once per
    # replica (scale replicas for more), and threads for status polls and cancels.
    aml_submit_threads: int = 1
    aml_poll_threads: int = 4
    aml_poll_seconds: float = 15.0  # how often a run's status is checked
    aml_auth_timeout: float = 20.0  # seconds each credential method may take
    # The stand-in only (NOT Azure): its run registry (shared by the replicas on this machine)
    # and how slow its submissions, queueing and preparation are, in seconds.
    aml_standin_dir: str | None = None
    aml_standin_submit_latency: float = 0.0
    aml_standin_queue_delay: float = 0.0
    aml_standin_prepare_delay: float = 0.0


@dataclass
class _Experiment:
    config: dict[str, Any]
    code_dir: Path | None
    shared_storage: SharedStorageAccount | None  # where trials write metrics; None: the deployment's


class Submitter:
    """Routes jobs to backends; keeps per-experiment code and SAS URLs cached."""

    def __init__(self, bus: Bus, store: BlobStore, work_dir: Path, replica: str, *,
                 shared_storage_endpoint: str = DEFAULT_SHARED_STORAGE_ENDPOINT) -> None:
        self.bus = bus
        self.store = store
        self.work_dir = work_dir
        self.replica = replica
        self.shared_storage_endpoint = shared_storage_endpoint  # template, {account} for the name
        self.backends: dict[str, Backend] = {}
        self._experiments: dict[str, _Experiment] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def report(self, msg: TrialStatusChanged) -> None:
        await self.bus.publish(msg)

    async def upload_logs(self, who: TrialIdentity, output_dir: Path) -> None:
        layout = Layout(who.experiment_id)
        for stream in ("stdout", "stderr"):
            path = output_dir / f"{stream}.log"
            if path.exists() and path.stat().st_size:
                data = await asyncio.to_thread(path.read_bytes)  # a trial's log can be large
                await self.store.write_bytes(layout.log_blob(who.trial_id, stream, who.attempt),
                                             data, content_type="text/plain")

    # ------------------------------------------------------------------ experiments

    async def _experiment(self, experiment_id: str) -> _Experiment:
        cached = self._experiments.get(experiment_id)
        if cached is not None:
            return cached
        lock = self._loading.setdefault(experiment_id, asyncio.Lock())
        async with lock:
            if experiment_id in self._experiments:
                return self._experiments[experiment_id]
            layout = Layout(experiment_id)
            found = await self.store.read_json(layout.experiment_doc)
            if found is None:
                raise PermanentError(f"experiment {experiment_id!r} has no {layout.experiment_doc}")
            doc = found[0]
            config = doc["config"]
            code_dir = await self._unpack_code(experiment_id, doc.get("code_blob"))
            # Raises SharedStorageError when the sharedStorage has no key to sign with.
            account = await results_account(self.store, experiment_id, config,
                                            endpoint_template=self.shared_storage_endpoint)
            if account is not None:
                log.info("experiment %s: trials write metrics to sharedStorage %s", experiment_id,
                         account.container_url)
            loaded = _Experiment(config, code_dir, account)
            self._experiments[experiment_id] = loaded
            return loaded

    def _metrics_url(self, experiment: _Experiment) -> str:
        """A trial's write-only SAS container URL, made now (signing is local and cheap), so
        that it lives for this trial's time limit plus a margin however long the experiment runs."""
        lifetime = sas_lifetime(experiment.config)
        if experiment.shared_storage is None:
            return self.store.write_only_sas_url(lifetime)
        return shared_storage_metrics_url(experiment.shared_storage, lifetime)

    async def _unpack_code(self, experiment_id: str, code_blob: str | None) -> Path | None:
        if not code_blob:
            return None
        from tunebus.code_archive import extract_code_archive

        dest = self.work_dir / experiment_id / "code"
        if dest.exists():
            return dest
        data = await self.store.read_bytes(code_blob)
        if data is None:
            raise PermanentError(f"code archive {code_blob} is missing")
        partial = dest.with_name(f"code.{uuid.uuid4().hex}.partial")
        await asyncio.to_thread(extract_code_archive, data, partial)
        try:
            partial.rename(dest)  # atomic: replicas on one machine never see half a tree
        except OSError:
            import shutil

            shutil.rmtree(partial, ignore_errors=True)  # another replica got there first
        return dest

    # ------------------------------------------------------------------ claims

    async def _claim(self, msg: TrialSubmit, stale_after: float = CLAIM_STALE_SECONDS) -> bool:
        """Take the job, unless another replica has it. False means: skip, it is handled.

        A live replica marks its claim "started" within moments and only then acks; so a claim
        still "starting" after a grace period belongs to a replica that died mid-start (its
        delivery is why we see the message again), and is taken over.
        """
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        claim = {"replica": self.replica, "state": "starting", "time": datetime.now(UTC).isoformat()}
        try:
            await self.store.write_json(path, claim, create_only=True)
            return True
        except ConcurrentWriteError:
            pass
        while True:
            found = await self.store.read_json(path)
            if found is None:
                raise TransientError(f"claim {path} vanished")
            doc, etag = found
            if doc.get("state") == "started":
                return False  # a duplicate of a job that runs
            age = (datetime.now(UTC) - datetime.fromisoformat(doc["time"])).total_seconds()
            if age >= stale_after:
                break
            await asyncio.sleep(min(1.0, stale_after - age))
        try:
            await self.store.write_json(path, claim, etag=etag)
        except ConcurrentWriteError:
            return False  # another replica took it over first
        log.warning("trial %s/%s attempt %d: taking over from %s, which did not finish starting it",
                    msg.experiment_id, msg.trial_id, msg.attempt, doc.get("replica"))
        return True

    async def _mark_started(self, msg: TrialSubmit) -> None:
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        await self.store.write_json(path, {"replica": self.replica, "state": "started",
                                           "time": datetime.now(UTC).isoformat()})

    # ------------------------------------------------------------------ handlers

    async def on_submit(self, msg: TrialSubmit) -> None:
        try:
            experiment = await self._experiment(msg.experiment_id)
        except SharedStorageError as exc:  # no trial of it can report metrics: fail, say why
            await self._report_failed(msg, f"sharedStorage: {exc}")
            return
        platform = str((experiment.config.get("trainingService") or {}).get("platform", "local"))
        backend = self.backends.get(platform)
        if backend is None:
            raise PermanentError(f"this submitter has no backend for platform {platform!r}")
        # AML submissions are idempotent (a fixed run id per attempt): a claim left "starting" by
        # a replica that died is taken over at once, before the delivery limit dead-letters it.
        stale_after = getattr(backend, "claim_stale_seconds", CLAIM_STALE_SECONDS)
        if not await self._claim(msg, stale_after):
            log.info("trial %s/%s attempt %d is already running elsewhere", msg.experiment_id,
                     msg.trial_id, msg.attempt)
            return
        who = TrialIdentity(msg.experiment_id, msg.trial_id, msg.sequence_id, msg.attempt)
        job = JobRequest(who, msg.parameters, experiment.config, experiment.code_dir,
                         self._metrics_url(experiment))
        try:
            await backend.submit(job)
        except PermanentSubmitError as exc:
            await self._report_failed(msg, f"submission failed: {exc}")
        except SubmitError as exc:
            raise TransientError(str(exc)) from exc
        await self._mark_started(msg)

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
                for experiment_id, trials in backend.running().items():
                    with contextlib.suppress(Exception):
                        await self.bus.publish(TrialHeartbeat(experiment_id=experiment_id,
                                                              trial_ids=trials, replica=self.replica))


def _replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def _handlers(submitter: Submitter) -> dict[type[Message], Callable[[Any], Awaitable[None]]]:
    return {TrialSubmit: submitter.on_submit}


def _aml_backend(settings: SubmitterSettings, submitter: Submitter, store: BlobStore, bus: Bus) -> AmlBackend:
    """The AML backend: azureml-core, or the stand-in when TUNEBUS_AML_STANDIN=1 (never by default)."""
    options = AmlOptions(submit_threads=settings.aml_submit_threads, poll_threads=settings.aml_poll_threads,
                         poll_seconds=settings.aml_poll_seconds, auth_timeout=settings.aml_auth_timeout)
    if settings.aml_standin:
        standin = StandinSettings(
            registry=Path(settings.aml_standin_dir or Path(settings.work_dir) / "aml-standin"),
            submit_latency=settings.aml_standin_submit_latency,
            queue_delay=settings.aml_standin_queue_delay,
            prepare_delay=settings.aml_standin_prepare_delay,
        )
        log.warning("TUNEBUS_AML_STANDIN=1: `platform: aml` trials run on the LOCAL STAND-IN, NOT on "
                    "Azure ML (run registry %s). For tests only.", standin.registry)
        api: Callable[[], Any] = partial(standin_api, standin)
    else:
        api = azureml_api
    # Credentials are the standard Azure variables, read once here (see aml/auth.py).
    azure_env = {k: v for k, v in os.environ.items()
                 if k.startswith(("AZURE_", "AZUREML_", "MSI_", "IDENTITY_")) or k == "PATH"}
    return AmlBackend(store=store, report=submitter.report, publish_ticket=bus.publish_ticket,
                      work_dir=Path(settings.work_dir), api=api, env=azure_env, options=options)


async def start(settings: SubmitterSettings) -> Running:
    """Connect, declare, start the backends and consumers; returns its shutdown and health checks."""
    store = BlobStore(settings.storage_connection_string, settings.storage_container)
    await store.ensure_container()
    bus = Bus(settings.amqp_url, service="aml-submitter")
    await bus.connect()
    replica = _replica_name()
    work_dir = Path(settings.work_dir)
    submitter = Submitter(bus, store, work_dir, replica,
                          shared_storage_endpoint=settings.shared_storage_endpoint)
    submitter.backends["local"] = LocalBackend(work_dir, submitter.report, submitter.upload_logs)
    aml = _aml_backend(settings, submitter, store, bus)
    aml.warm_up()
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
        await bus.close()
        for backend in submitter.backends.values():
            await backend.close()
        await store.close()

    return Running(shutdown, {"broker": bus.check, "storage": store.check})
