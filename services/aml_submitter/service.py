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
import shutil
import socket
import sys
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

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
from shared.records import BadExperimentDocument, read_experiment_doc
from shared.results import (
    SharedStorageAccount,
    SharedStorageError,
    results_account,
    shared_storage_results_url,
)
from shared.sandbox import ALWAYS_PASSED, DEFAULT_TRIAL_USER, Sandbox, SandboxError, make_non_dumpable
from shared.service import Running
from shared.settings import DEFAULT_SHARED_STORAGE_ENDPOINT, CommonSettings
from shared.storage import BlobStore, ConcurrentWriteError, Layout
from shared.topology import AML_KILL_QUEUE, AML_WATCH_QUEUE, SUBMIT_QUEUE, replica_control_queue

from .aml.backend import AmlBackend
from .aml.options import AmlOptions
from .aml.sdk import azure_ai_ml_api, azureml_api, standin_api, standin_v2_api
from .backend import Backend, JobRequest, PermanentSubmitError, SubmitError
from .checkpoints import CheckpointTransfer
from .local import LocalBackend
from .trial_env import TrialIdentity, sas_lifetime

__all__ = ["Submitter", "SubmitterSettings", "start"]

#: Experiments a replica keeps loaded (config, code folder, results account), least recently used out.
MAX_CACHED_EXPERIMENTS = 256

log = logging.getLogger("tunebus.submitter")

CLAIM_STALE_SECONDS = 10.0  # seconds a claim may stay 'starting' before it is abandoned
MARK_STARTED_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds between tries to mark a claim started


@dataclass(frozen=True)
class _Claim:
    """What :meth:`Submitter._claim` found: start the job (``etag``: our claim's), it is handled
    elsewhere, or it was abandoned by ``previous`` (the attempt is reported lost)."""

    outcome: Literal["start", "handled", "abandoned"]
    etag: str | None = None
    previous: str | None = None


class SubmitterSettings(CommonSettings):
    """Submitter settings (``TUNEBUS_`` environment variables)."""

    work_dir: str = "/tmp/tunebus-trials"
    local_trials: bool = True  # TUNEBUS_LOCAL_TRIALS=0: this deployment runs Azure ML trials only
    trial_user: str = DEFAULT_TRIAL_USER  # who local (and stand-in) trials run as when this runs as root
    # Comma-separated names of this process's variables that local trials also get (besides
    # PATH, HOME, LANG, LC_*, TZ, CUDA_VISIBLE_DEVICES): e.g. HTTPS_PROXY,HF_HOME.
    trial_env_passthrough: str = ""
    # trial.submit deliveries this replica takes at once. Small, so that replicas share the work:
    # AML submissions are serialized per replica (aml_submit_threads); local spawns take ms.
    max_jobs: int = 8
    heartbeat_seconds: float = 5.0
    # A local trial's stdout and stderr keep their last this many bytes each when uploaded.
    log_max_bytes: int = Field(default=4 << 20, ge=1024, le=1 << 30)
    aml_standin: bool = False  # TUNEBUS_AML_STANDIN=1: run `platform: aml` on the local stand-in
    # Which Azure ML SDK submits and watches: v1 (azureml-core, the default) or v2 (azure-ai-ml).
    # See README "Azure ML SDK v1 or v2". Not to be switched while AML experiments run.
    aml_sdk: Literal["v1", "v2"] = "v1"
    # Carried by every AML run id and tag (shared/deployment.py); absent: made once, kept in storage.
    deployment_id: str | None = None
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
    # What exists in the stand-in's "workspace": compute names and images (comma-separated).
    aml_standin_computes: str = "cpu-cluster,gpu-cluster"
    aml_standin_images: str = "msranni/nni"


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
        self.work_dir = work_dir
        self.replica = replica
        self.shared_storage_endpoint = shared_storage_endpoint  # template, {account} for the name
        self.backends: dict[str, Backend] = {}
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
            _, evicted = self._experiments.popitem(last=False)
            if evicted.results_store is not None:
                # A call still in flight on it reopens its session (BlobStore does on use).
                await evicted.results_store.close()
        return loaded

    async def _load_experiment(self, experiment_id: str) -> _Experiment:
        """An experiment's config, unpacked code and results account, from storage."""
        layout = Layout(experiment_id)
        try:
            doc = await read_experiment_doc(self.store, experiment_id)
        except BadExperimentDocument as exc:
            raise PermanentError(str(exc)) from None
        if doc is None:
            raise PermanentError(f"experiment {experiment_id!r} has no {layout.experiment_doc}")
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
        """Close the stores opened on experiments' sharedStorage accounts."""
        for experiment in self._experiments.values():
            if experiment.results_store is not None:
                await experiment.results_store.close()

    async def _unpack_code(self, experiment_id: str, code_blob: str | None) -> Path | None:
        if not code_blob:
            return None
        from shared.code_archive import extract_code_archive

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
            shutil.rmtree(partial, ignore_errors=True)  # another replica got there first
        return dest

    # ------------------------------------------------------------------ claims

    async def _claim(self, msg: TrialSubmit, stale_after: float, *, reruns: bool) -> _Claim:
        """Take the job, unless another replica has it.

        A live replica marks its claim "started" at once after starting the job (before it
        reports anything), so a claim still "starting" after ``stale_after`` belongs to a replica
        that died or stalled mid-start; its delivery is why we see the message again. What it left
        may have started: a local trial may be writing the attempt's results still, so the attempt
        is not run again into the same results blob but *abandoned* (reported lost: the ingestor
        ends it from what it stored, or the dispatcher runs a new attempt). Only a backend whose
        submissions are idempotent (``reruns``: an AML run has a fixed id per attempt) takes the
        job over and submits it again.
        """
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        starting = {"replica": self.replica, "state": "starting", "time": datetime.now(UTC).isoformat()}
        try:
            return _Claim("start", etag=await self.store.write_json(path, starting, create_only=True))
        except ConcurrentWriteError:
            pass
        while True:
            found = await self.store.read_json(path)
            if found is None:
                raise TransientError(f"claim {path} vanished")
            doc, etag = found
            if doc.get("state") == "started":
                return _Claim("handled")  # a duplicate of a job that runs
            if doc.get("state") == "abandoned":  # reported lost already; its report is sent again
                return _Claim("abandoned", previous=str(doc.get("previous")))
            if doc.get("state") == "released":  # its replica started nothing: claimed afresh
                try:
                    return _Claim("start", etag=await self.store.write_json(path, starting, etag=etag))
                except ConcurrentWriteError:
                    continue
            age = (datetime.now(UTC) - datetime.fromisoformat(doc["time"])).total_seconds()
            if age >= stale_after:
                break
            await asyncio.sleep(min(1.0, stale_after - age))
        previous = str(doc.get("replica"))
        if reruns:
            try:
                etag = await self.store.write_json(path, starting, etag=etag)
            except ConcurrentWriteError:
                return _Claim("handled")  # another replica took it over first
            log.warning("trial %s/%s attempt %d: taking over from %s, which did not finish starting it",
                        msg.experiment_id, msg.trial_id, msg.attempt, previous)
            return _Claim("start", etag=etag)
        abandoned = {"replica": self.replica, "state": "abandoned", "previous": previous,
                     "time": datetime.now(UTC).isoformat()}
        try:
            await self.store.write_json(path, abandoned, etag=etag)
        except ConcurrentWriteError:
            return _Claim("handled")  # its replica marked it started after all, or another abandoned it
        log.warning("trial %s/%s attempt %d: %s did not finish starting it; reported lost, not run "
                    "again into the same results", msg.experiment_id, msg.trial_id, msg.attempt, previous)
        return _Claim("abandoned", previous=previous)

    async def _release(self, msg: TrialSubmit, etag: str) -> None:
        """Give back a claim whose job was not started (its retry may then start it anywhere at
        once). Best effort: a claim left behind is abandoned by the next replica, after a while."""
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        released = {"replica": self.replica, "state": "released", "time": datetime.now(UTC).isoformat()}
        try:
            await self.store.write_json(path, released, etag=etag)
        except Exception as exc:
            log.warning("trial %s/%s attempt %d: releasing its claim failed: %r", msg.experiment_id,
                        msg.trial_id, msg.attempt, exc)

    async def _mark_started(self, msg: TrialSubmit, etag: str | None, backend: Backend) -> None:
        """Mark the claim "started" — only if it is still ours (``etag``): another replica may
        have abandoned it while this one stalled mid-start, and the dispatcher then runs a new
        attempt; this attempt's job is stopped instead of running beside it. The job runs
        whatever else happens here, so this never raises: it retries a while (storage may be
        restarting), then leaves the claim "starting" (a redelivered submit would then report
        the attempt lost, never start it twice)."""
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        for delay in (*MARK_STARTED_RETRY_DELAYS, None):
            try:
                await self.store.write_json(path, {"replica": self.replica, "state": "started",
                                                   "time": datetime.now(UTC).isoformat()}, etag=etag)
                return
            except ConcurrentWriteError:
                await self._after_lost_claim(msg, path, backend)
                return
            except Exception as exc:
                if delay is None:
                    log.error("trial %s/%s attempt %d runs, but marking its claim started failed: %r",
                              msg.experiment_id, msg.trial_id, msg.attempt, exc)
                    return
                await asyncio.sleep(delay)

    async def _after_lost_claim(self, msg: TrialSubmit, path: str, backend: Backend) -> None:
        """The claim changed under this replica while it started the job: stop the job if the
        claim was abandoned (that attempt is reported lost; another runs in its place)."""
        found = await self.store.read_json(path)
        doc = found[0] if found is not None else {}
        if doc.get("state") == "started" and doc.get("replica") == self.replica:
            return  # our own earlier write got through; its answer was lost
        if doc.get("state") != "abandoned":
            return  # taken over by a replica that re-submits idempotently (an AML run): nothing to stop
        log.warning("trial %s/%s attempt %d: its claim was abandoned by %s while this replica started it; "
                    "stopping it", msg.experiment_id, msg.trial_id, msg.attempt, doc.get("replica"))
        await backend.kill(msg.experiment_id, msg.trial_id, TrialStatus.SYS_CANCELED,
                           f"its claim was abandoned by {doc.get('replica')} while {self.replica} started it "
                           f"(the attempt was reported lost and runs again)", attempt=msg.attempt)

    # ------------------------------------------------------------------ handlers

    async def on_submit(self, msg: TrialSubmit) -> None:
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
            claim = await self._claim(msg, stale_after, reruns=reruns)
            if claim.outcome == "handled":
                log.info("trial %s/%s attempt %d is already running elsewhere", msg.experiment_id,
                         msg.trial_id, msg.attempt)
                return
            if claim.outcome == "abandoned":
                await self.report(TrialStatusChanged(
                    message_id=f"{msg.experiment_id}-{msg.trial_id}-{msg.attempt}-abandoned",
                    experiment_id=msg.experiment_id, trial_id=msg.trial_id, parameter_id=msg.sequence_id,
                    attempt=msg.attempt, status=TrialStatus.FAILED, lost=True,
                    error=f"lost: its submitter replica {claim.previous} stopped while starting it"))
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
                await asyncio.shield(self._release(msg, etag))
            if isinstance(exc, SubmitError):
                raise TransientError(str(exc)) from exc
            raise
        await self._mark_started(msg, etag, backend)

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


def _sandbox(settings: SubmitterSettings) -> tuple[Sandbox | None, str | None]:
    """How trials are sandboxed here, or why they cannot be (every local trial then fails so)."""
    try:
        return Sandbox.for_this_process(settings.trial_user, settings.trial_env_passthrough.split(",")), None
    except SandboxError as exc:
        return None, str(exc)


def _standin_sandbox(sandbox: Sandbox | None, work_dir: Path) -> dict[str, Any]:
    """The stand-in's runs sandboxed like local trials (see StandinSettings.sandbox)."""
    if sandbox is None:
        raise SandboxError("the AML stand-in runs trials like local ones, and those cannot be sandboxed")
    venv_bin = Path(sys.executable).parent
    path_first, pythonpath = sandbox.trial_interpreter(venv_bin, work_dir / ".trial-python")
    user = sandbox.user
    return {"prefix": sandbox.prefix(), "owner": None if user is None else [user.uid, user.gid],
            "path_first": str(path_first), "pythonpath": pythonpath,
            "allowed": [*ALWAYS_PASSED, *sandbox.passthrough]}


def _aml_backend(settings: SubmitterSettings, submitter: Submitter, store: BlobStore, bus: Bus,
                 deployment: str, sandbox: Sandbox | None) -> AmlBackend:
    """The AML backend: azureml-core, or the stand-in when TUNEBUS_AML_STANDIN=1 (never by default)."""
    options = AmlOptions(submit_threads=settings.aml_submit_threads, poll_threads=settings.aml_poll_threads,
                         poll_seconds=settings.aml_poll_seconds, auth_timeout=settings.aml_auth_timeout)
    if settings.aml_standin:
        from aml_standin.v1 import StandinSettings  # only when asked for: never on Azure

        standin = StandinSettings(
            registry=Path(settings.aml_standin_dir or Path(settings.work_dir) / "aml-standin"),
            submit_latency=settings.aml_standin_submit_latency,
            queue_delay=settings.aml_standin_queue_delay,
            prepare_delay=settings.aml_standin_prepare_delay,
            computes=tuple(n.strip() for n in settings.aml_standin_computes.split(",") if n.strip()),
            images=tuple(n.strip() for n in settings.aml_standin_images.split(",") if n.strip()),
            sandbox=_standin_sandbox(sandbox, Path(settings.work_dir)),
        )
        log.warning("TUNEBUS_AML_STANDIN=1: `platform: aml` trials run on the LOCAL STAND-IN (SDK %s), "
                    "NOT on Azure ML (run registry %s). For tests only.", settings.aml_sdk, standin.registry)
        api: Callable[[], Any] = partial(standin_v2_api if settings.aml_sdk == "v2" else standin_api, standin)
    else:
        api = azure_ai_ml_api if settings.aml_sdk == "v2" else azureml_api
    # Credentials are the standard Azure variables, read once here (see aml/auth.py).
    azure_env = {k: v for k, v in os.environ.items()
                 if k.startswith(("AZURE_", "AZUREML_", "MSI_", "IDENTITY_")) or k == "PATH"}
    return AmlBackend(store=store, report=submitter.report, publish_ticket=bus.publish_ticket,
                      work_dir=Path(settings.work_dir), api=api, env=azure_env, options=options,
                      deployment_id=deployment, secrets=settings.known_secrets())


async def start(settings: SubmitterSettings) -> Running:
    """Connect, declare, start the backends and consumers; returns its shutdown and health checks."""
    if not make_non_dumpable():
        log.warning("could not make this process non-dumpable: trials of its user may read its /proc files")
    sandbox, sandbox_error = _sandbox(settings)
    store = BlobStore(settings.storage_connection_string, settings.storage_container)
    await store.ensure_container()
    bus = Bus(settings.amqp_url, service="aml-submitter")
    await bus.connect()
    replica = _replica_name()
    work_dir = Path(settings.work_dir)
    submitter = Submitter(bus, store, work_dir, replica,
                          shared_storage_endpoint=settings.shared_storage_endpoint,
                          log_max_bytes=settings.log_max_bytes)
    if settings.local_trials:
        local = LocalBackend(work_dir, submitter.report, submitter.upload_logs, sandbox=sandbox,
                             sandbox_error=sandbox_error, checkpoints=CheckpointTransfer(store))
        submitter.backends["local"] = local
        log.info("local trials run %s", f"as user {sandbox.user.name}" if sandbox and sandbox.user
                 else "as this process's user (not root)" if sandbox else f"never: {sandbox_error}")
    aml = _aml_backend(settings, submitter, store, bus, await deployment_id(store, settings.deployment_id),
                       sandbox)
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
        await bus.close()
        for backend in submitter.backends.values():
            await backend.close()
        await submitter.close()
        await store.close()

    return Running(shutdown, {"broker": bus.check, "storage": store.check})
