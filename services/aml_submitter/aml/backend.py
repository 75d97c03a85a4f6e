"""The AML backend: one Azure ML run per trial attempt, watched by tickets, cancelled by any replica.

Submitting (``trial.submit``, on the replica that took the delivery):
    credential → ``Workspace`` → ``Run.get(run id)`` first: a run that exists (an earlier
    attempt of this submission got through, then the replica crashed before recording it) is
    adopted; only on a 404 → ``ComputeTarget`` → snapshot + ``ScriptRunConfig`` →
    ``Experiment(ws, "tunebus-<exp>").submit(config, tags, run_id=…)``. After *any* submit error
    the run is looked up again: azureml-core sets tags after the run exists (separate calls,
    which it retries for minutes), a 409 means an earlier submit got through, and a response can
    be lost on the way back; a run that exists is adopted (its tags set again), never left an
    orphan. The run id is fixed per trial attempt and carries the deployment's id
    (:mod:`shared.deployment`), so a run of another deployment sharing the workspace is never
    adopted. The run is recorded in the trial's blob (``Layout.trial_doc``), WAITING is
    reported with the portal URL, and an ``aml.watch`` ticket is published.

Watching (``aml.watch`` tickets, on any replica): load the run by id, map its status
(:mod:`.status`), report RUNNING once and the end once (with AML's error and the portal URL),
re-publish the ticket until the run ends. Nothing lives in a replica's memory: a replica
killed mid-experiment leaves its tickets in the queues for the others.

Cancelling (``trial.kill`` on the shared ``tunebus.aml-kill`` queue, any replica): record the
kill in the trial's blob and ``run.cancel()``, then *confirm* it: ``Run.cancel`` ignores the
HTTP result, so the status is read again (CancelRequested or an end confirms it), the cancel
re-sent, and after ``cancel_attempts`` a :class:`CancelNotConfirmedError` names the run (the
kill delivery is retried). The watcher then reports the end with the status the kill asked for.
A kill that arrives while the run is being submitted is found by
the submitter in the trial's blob right after it submits.

azureml-core is blocking, and its calls on one workspace client are serialized: they run in
two bounded thread pools — submissions (``TUNEBUS_AML_SUBMIT_THREADS``, 1 by default) and
status polls / cancels (``TUNEBUS_AML_POLL_THREADS``) — never on the event loop.
Throttling (429), 5xx and network errors (by the HTTP status the SDK wrote into its message,
:mod:`.errors`) are retried with exponential back-off and then handed back as
:class:`SubmitError` (the delivery is retried); an authentication error drops the credential
(the next attempt signs in again); anything else fails the trial with the reason
(:class:`PermanentSubmitError`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from shared.bus import PermanentError, TransientError
from shared.messages import (
    TERMINAL_TRIAL_STATUSES,
    Ticket,
    TrialHeartbeat,
    TrialKill,
    TrialStatus,
    TrialStatusChanged,
)
from shared.records import BadExperimentDocument, read_experiment_doc
from shared.storage import BlobStore, ConcurrentWriteError, Layout

from ..backend import JobRequest, PermanentSubmitError, Reporter, SubmitError
from ..trial_env import TrialIdentity
from .auth import DEFAULT_AUTH_TIMEOUT, NoCredentialError, resolve_auth
from .errors import is_auth_error, is_conflict, is_not_found, is_transient
from .job import (
    DEPLOYMENT_TAG,
    AmlTarget,
    aml_experiment_name,
    aml_time_limit,
    build_script_run_config,
    build_snapshot,
    import_azureml,
    run_id_for,
    run_tags,
)
from .status import NOT_RESPONDING_LIMIT, AmlRunStatus, is_terminal, trial_status_for

__all__ = [
    "AmlBackend",
    "AmlOptions",
    "CancelNotConfirmedError",
    "ForeignRunError",
    "RetryPolicy",
    "azure_ai_ml_api",
    "azureml_api",
    "failure_reason",
    "standin_api",
    "standin_v2_api",
]

log = logging.getLogger("tunebus.submitter.aml")

T = TypeVar("T")
TicketPublisher = Callable[[Ticket], Awaitable[None]]

#: How long a failed credential look-up is remembered (every trial would wait for it again).
AUTH_FAILURE_TTL = 60.0
#: Consecutive permanent errors while watching a run before its trial is failed.
WATCH_PERMANENT_LIMIT = 5
#: Longest wait between two checks of a run whose checks keep failing.
WATCH_MAX_BACKOFF = 300.0
#: Run objects a replica keeps between checks (the runs it watches most recently).
RUN_CACHE_SIZE = 4096
_ERROR_CHARS = 4000


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter for transient submission errors."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): base·2^(n-1), capped, ±20%."""
        raw = min(self.cap, self.base * 2 ** (attempt - 1))
        return raw * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class AmlOptions:
    """The AML backend's knobs (from the submitter's settings)."""

    submit_threads: int = 1
    poll_threads: int = 4
    poll_seconds: float = 15.0
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    retry: RetryPolicy = RetryPolicy()
    not_responding_limit: float = NOT_RESPONDING_LIMIT
    heartbeat_seconds: float = 60.0  # how often a watched run's heartbeat is published
    cancel_attempts: int = 3  # cancels sent before a cancel that does not take is an error
    cancel_check_seconds: float = 2.0  # wait after each cancel before reading the status again


class CancelNotConfirmedError(TransientError):
    """Azure ML still reports the run active after every cancel sent: it may still be billing."""


class ForeignRunError(PermanentSubmitError):
    """A run with this trial's run id exists but was not made by this deployment: never adopted."""


def _build_script_run_config(job: JobRequest, target: AmlTarget, snapshot: Path) -> Any:
    return build_script_run_config(job, target, snapshot, None)


def azureml_api() -> SimpleNamespace:
    """SDK v1: azureml-core's Workspace, ComputeTarget, Experiment and Run (imported on first use)."""
    core = import_azureml()
    from azureml.core.compute import ComputeTarget

    return SimpleNamespace(Workspace=core.Workspace, ComputeTarget=ComputeTarget,
                           Experiment=core.Experiment, Run=core.Run, build_job=_build_script_run_config,
                           auth_methods=None, standin=False, sdk="v1")


def standin_api(settings: Any) -> SimpleNamespace:
    """The v1 stand-in's look-alikes (NOT Azure), bound to its registry and delays."""
    from functools import partial

    from . import standin

    return SimpleNamespace(Workspace=partial(standin.Workspace, settings=settings),
                           ComputeTarget=standin.ComputeTarget, Experiment=standin.Experiment,
                           Run=standin.Run, build_job=_build_script_run_config, auth_methods=None,
                           standin=True, sdk="v1")


def azure_ai_ml_api() -> SimpleNamespace:
    """SDK v2: azure-ai-ml's MLClient behind the same interface (see :mod:`.v2`)."""
    from .v2 import azure_ai_ml_api as v2

    return v2()


def standin_v2_api(settings: Any) -> SimpleNamespace:
    """The v2 stand-in's MLClient (NOT Azure) behind the same interface."""
    from functools import partial

    from .standin_v2 import StandinMLClient
    from .v2 import v2_api

    return v2_api(partial(StandinMLClient, settings=settings), standin=True)


def failure_reason(details: Mapping[str, Any]) -> str | None:
    """The error of a failed run from ``run.get_details()``, as one readable string."""
    error = details.get("error")
    while isinstance(error, Mapping) and isinstance(error.get("error"), Mapping):
        error = error["error"]  # AML nests it: {"error": {"code": ..., "message": ...}}
    if error is None or error == {}:
        return None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        text = f"{code}: {message}" if code and message else str(message or code or json.dumps(error))
    else:
        text = str(error)
    return text[-_ERROR_CHARS:]


class AmlBackend:
    """Runs trials as Azure ML runs (or on the stand-in); one instance per submitter replica."""

    platform = "aml"
    #: Submitting twice is harmless (the run id is fixed): a "starting" claim of a replica that
    #: died is taken over at once instead of after the local backend's wait.
    claim_stale_seconds = 0.0
    #: A submit sent again by the dispatcher (it heard nothing of the run for long) finds the run
    #: by its fixed id and watches it anew, even though a claim says it was started.
    adopts_runs = True

    def __init__(self, *, store: BlobStore, report: Reporter, publish_ticket: TicketPublisher,
                 work_dir: Path, api: Callable[[], SimpleNamespace], env: Mapping[str, str],
                 deployment_id: str, options: AmlOptions | None = None,
                 secrets: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.deployment_id = deployment_id
        self.secrets = dict(secrets or {})  # the service's own: never in a snapshot
        self.report = report
        self.publish_ticket = publish_ticket
        self.work_dir = work_dir
        self.env = dict(env)
        self.options = options or AmlOptions()
        self._api_factory = api
        self._api: SimpleNamespace | None = None
        self._submit_pool = ThreadPoolExecutor(self.options.submit_threads, thread_name_prefix="aml-submit")
        self._poll_pool = ThreadPoolExecutor(self.options.poll_threads, thread_name_prefix="aml-poll")
        self._lock = threading.Lock()
        self._workspaces: dict[tuple[str, str, str], Any] = {}
        self._compute: dict[tuple[str, str, str, str], Any] = {}
        self._runs: OrderedDict[str, Any] = OrderedDict()
        self._auth: Any = None
        self._auth_failure: tuple[float, PermanentSubmitError] | None = None

    # ------------------------------------------------------------------ blocking side (threads)

    @property
    def api(self) -> SimpleNamespace:
        """The Workspace/ComputeTarget/Experiment/Run classes in use (real or stand-in)."""
        with self._lock:
            if self._api is None:
                self._api = self._api_factory()
            return self._api

    def _credential(self, probe: Callable[[Any], Any]) -> tuple[Any, Any]:
        """(credential, what ``probe`` made with it): the first credential the workspace answers.

        A credential that only yields a token (a managed identity without a role on the
        workspace) is not enough: ``probe`` (loading the workspace) must work with it too.
        """
        with self._lock:
            auth = self._auth
            failure = self._auth_failure
        if auth is not None:
            try:
                return auth, probe(auth)
            except Exception as exc:
                if not is_auth_error(exc):
                    raise
                self._drop_credential(exc)
        elif failure is not None and time.monotonic() - failure[0] < AUTH_FAILURE_TTL:
            raise failure[1]
        try:
            auth, method, answer = resolve_auth(self.env, timeout=self.options.auth_timeout, probe=probe,
                                                methods=self.api.auth_methods)
        except NoCredentialError as exc:
            with self._lock:
                self._auth_failure = (time.monotonic(), exc)
            raise
        log.info("AML credential: %s", method)
        with self._lock:
            self._auth, self._auth_failure = auth, None
        return auth, answer

    def _drop_credential(self, exc: BaseException) -> None:
        """Forget the credential and everything loaded with it: the next call signs in again."""
        log.warning("AML credential refused (%s): signing in again at the next call", exc)
        with self._lock:
            self._auth = None
            self._workspaces.clear()
            self._compute.clear()
            self._runs.clear()

    def _workspace(self, target: AmlTarget) -> Any:
        key = target.workspace_key
        with self._lock:
            if key in self._workspaces:
                return self._workspaces[key]

        def load(auth: Any) -> Any:
            return self.api.Workspace(target.subscription_id, target.resource_group, target.workspace_name,
                                      auth=auth)

        workspace = load(None) if self.api.standin else self._credential(load)[1]
        with self._lock:
            return self._workspaces.setdefault(key, workspace)

    def _compute_target(self, target: AmlTarget, workspace: Any) -> Any:
        key = (*target.workspace_key, target.compute_target)
        with self._lock:
            if key in self._compute:
                return self._compute[key]
        compute = self.api.ComputeTarget(workspace, target.compute_target)  # raises if it does not exist
        with self._lock:
            return self._compute.setdefault(key, compute)

    def _prepare_blocking(self, job: JobRequest, target: AmlTarget) -> tuple[Path, Any]:
        """Build the snapshot folder and the ScriptRunConfig: local work, no service call."""
        who = job.who
        snapshot = self.work_dir / who.experiment_id / "aml-snapshots" / f"{who.trial_id}-{who.attempt}"
        shutil.rmtree(snapshot, ignore_errors=True)
        build_snapshot(job, snapshot, self.secrets)
        return snapshot, self.api.build_job(job, target, snapshot)

    def _find_run(self, workspace: Any, run_id: str) -> Any | None:
        """The run with this id, None if Azure ML says 404; other errors are raised."""
        try:
            return self.api.Run.get(workspace, run_id)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    def _adopt(self, run: Any, job: JobRequest) -> tuple[str, str]:
        """Take over a run that exists: ours only if it carries this deployment's tag (or none yet).

        A run made by this submission whose tags never got set (the SDK sets them after the run
        exists) has no tags: they are set now. A run with another deployment's tag is refused.
        """
        tags = dict(run.get_tags() or {})
        owner = tags.get(DEPLOYMENT_TAG)
        if owner not in (None, self.deployment_id):
            raise ForeignRunError(f"AML run {run.id} belongs to deployment {owner!r}, not to this one "
                                  f"({self.deployment_id!r}): not adopted")
        if owner is None:
            try:
                run.set_tags(run_tags(job, self.deployment_id))
            except Exception as exc:  # the run is ours either way; the tags only help people find it
                log.warning("AML run %s: setting its tags failed: %r", run.id, exc)
        log.info("AML run %s exists already (submitted before): adopted", run.id)
        return str(run.id), str(run.get_portal_url())

    def _submit_blocking(self, job: JobRequest, target: AmlTarget, config: Any) -> tuple[str, str]:
        """Submit the run, or adopt it if this attempt exists already; (run id, portal URL)."""
        workspace = self._workspace(target)
        who = job.who
        run_id = run_id_for(who, self.deployment_id)
        existing = self._find_run(workspace, run_id)
        if existing is not None:
            return self._adopt(existing, job)
        self._compute_target(target, workspace)  # fails (permanently) when the cluster does not exist
        experiment = self.api.Experiment(workspace, aml_experiment_name(who.experiment_id))
        if self.api.standin:
            log.warning("AML STAND-IN, NOT AZURE ML: trial %s/%s runs on this machine",
                        who.experiment_id, who.trial_id)
        try:
            run = experiment.submit(config, tags=run_tags(job, self.deployment_id), run_id=run_id)
        except Exception as exc:
            return self._after_submit_error(exc, workspace, job, run_id)
        return str(run.id), str(run.get_portal_url())

    def _after_submit_error(self, exc: Exception, workspace: Any, job: JobRequest,
                            run_id: str) -> tuple[str, str]:
        """After a failed submit: adopt the run if it exists after all, else raise what happened."""
        try:
            found = self._find_run(workspace, run_id)
        except Exception as lookup:
            # Unknown whether the run exists: retry (the next attempt looks it up first).
            raise SubmitError(f"submitting failed ({type(exc).__name__}: {exc}) and looking the run "
                              f"up failed too ({type(lookup).__name__}: {lookup})") from exc
        if found is not None:
            log.warning("submitting AML run %s raised %s, but the run exists: adopted", run_id,
                        type(exc).__name__)
            return self._adopt(found, job)
        if is_conflict(exc):  # it exists, but is not visible yet
            raise SubmitError(f"AML run {run_id} exists (409) but cannot be read yet: {exc}") from exc
        raise exc

    async def warm_up(self, timeout: float = 120.0) -> None:
        """Import the SDK in the submission thread before the first trial needs it.

        azureml-core takes about a second to import, azure-ai-ml several: a replica is not
        ready to submit before that, so its start waits for it (bounded) rather than the
        first trials. An SDK that is absent is logged here and reported per trial.
        """
        def load() -> None:
            try:
                if self.api.sdk == "v2":
                    from .v2 import import_azure_ai_ml

                    import_azure_ai_ml()
                    from azure.ai.ml.entities import Environment  # noqa: F401  (the job's parts)
                else:
                    import_azureml()
                    from azureml.core.runconfig import DockerConfiguration  # noqa: F401
            except PermanentSubmitError as exc:
                log.warning("%s", exc)

        try:
            await asyncio.wait_for(self._in(self._submit_pool, load), timeout)
        except TimeoutError:
            log.warning("importing the Azure ML SDK took over %.0f s; going on", timeout)

    def _run(self, coords: Mapping[str, str], run_id: str) -> Any:
        """The run object, loaded once per replica (``Run.get`` costs two service calls)."""
        with self._lock:
            if run_id in self._runs:
                self._runs.move_to_end(run_id)
                return self._runs[run_id]
        target = AmlTarget(coords["subscription_id"], coords["resource_group"], coords["workspace_name"],
                           coords.get("compute_target", ""), coords.get("docker_image", ""))
        run = self.api.Run.get(self._workspace(target), run_id)
        with self._lock:
            self._runs[run_id] = run
            while len(self._runs) > RUN_CACHE_SIZE:
                self._runs.popitem(last=False)
        return run

    def _poll_blocking(self, coords: Mapping[str, str], run_id: str) -> tuple[str, dict[str, Any] | None]:
        run = self._run(coords, run_id)
        status = str(run.get_status())
        if not is_terminal(status):
            return status, None
        with self._lock:
            self._runs.pop(run_id, None)  # no more checks of this run
        return status, dict(run.get_details())

    def _cancel_blocking(self, coords: Mapping[str, str], run_id: str) -> str:
        """Cancel the run and confirm it took; the status it had. :class:`CancelNotConfirmedError` if not.

        ``Run.cancel`` ignores the service's answer: only a later status (CancelRequested, or
        an end) shows that the cancel was accepted, so each cancel is followed by a check.
        """
        run = self._run(coords, run_id)
        first = status = str(run.get_status())
        for attempt in range(1, self.options.cancel_attempts + 1):
            if is_terminal(status) or status == AmlRunStatus.CANCEL_REQUESTED:
                return first
            run.cancel()
            time.sleep(self.options.cancel_check_seconds)
            status = str(run.get_status())
            if not (is_terminal(status) or status == AmlRunStatus.CANCEL_REQUESTED):
                log.warning("AML run %s still %s after cancel %d/%d", run_id, status, attempt,
                            self.options.cancel_attempts)
        if is_terminal(status) or status == AmlRunStatus.CANCEL_REQUESTED:
            return first
        raise CancelNotConfirmedError(f"AML run {run_id} is still {status} after "
                                      f"{self.options.cancel_attempts} cancels: it may still be billing")

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # ------------------------------------------------------------------ trial document

    async def _update_trial_doc(self, experiment_id: str, trial_id: str,
                                change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write the trial's blob with an ETag condition, retrying lost races."""
        path = Layout(experiment_id).trial_doc(trial_id)
        for _ in range(20):
            found = await self.store.read_json(path)
            doc, etag = (found if found is not None else ({}, None))
            change(doc)
            try:
                if etag is None:
                    await self.store.write_json(path, doc, create_only=True)
                else:
                    await self.store.write_json(path, doc, etag=etag)
                return doc
            except ConcurrentWriteError:
                await asyncio.sleep(0.05 * random.random())
        raise TransientError(f"{path}: too many concurrent writers")

    # ------------------------------------------------------------------ Backend protocol

    async def submit(self, job: JobRequest) -> None:
        """Submit the trial's AML run, record it, report WAITING and start watching it."""
        who = job.who
        target = AmlTarget.from_config(job.config)
        path = Layout(who.experiment_id).trial_doc(who.trial_id)
        found = await self.store.read_json(path)
        kill = (found[0] if found else {}).get("kill")
        if kill:  # killed before it was ever submitted
            await self._report_end(who, TrialStatus(kill["status"]), kill.get("reason"), None,
                                   "not submitted")
            return
        run_id, portal_url = await self._submit_with_retries(job, target)
        coords = {"subscription_id": target.subscription_id, "resource_group": target.resource_group,
                  "workspace_name": target.workspace_name}

        def record(doc: dict[str, Any]) -> None:
            doc.update(platform="aml", workspace=coords, parameters=job.parameters,
                       aml_experiment=aml_experiment_name(who.experiment_id))
            doc.setdefault("runs", {})[str(who.attempt)] = {
                "run_id": run_id, "portal_url": portal_url, "submitted_at": datetime.now(UTC).isoformat(),
            }

        doc = await self._update_trial_doc(who.experiment_id, who.trial_id, record)
        log.info("trial %s/%s attempt %d: AML run %s (%s)", who.experiment_id, who.trial_id, who.attempt,
                 run_id, portal_url)
        if doc.get("kill"):  # a kill came in while submitting: nobody else knew the run yet
            try:
                await self._in(self._poll_pool, self._cancel_blocking, coords, run_id)
            except Exception as exc:  # the run is recorded: a redelivery adopts it and cancels again
                raise SubmitError(f"cancelling AML run {run_id} (killed while submitting): {exc}") from exc
        await self.report(TrialStatusChanged(
            experiment_id=who.experiment_id, trial_id=who.trial_id, parameter_id=who.sequence_id,
            attempt=who.attempt, status=TrialStatus.WAITING, job_url=portal_url,
            backend_status=AmlRunStatus.NOT_STARTED.value,
        ))
        await self.publish_ticket(Ticket(
            experiment_id=who.experiment_id, purpose="aml.watch", trial_id=who.trial_id,
            due=datetime.now(UTC) + timedelta(seconds=self.options.poll_seconds),
            state={"run_id": run_id, "attempt": who.attempt, "parameter_id": who.sequence_id,
                   "last_status": AmlRunStatus.NOT_STARTED.value, "job_url": portal_url,
                   "workspace": coords, "reported_running": False, "errors": 0,
                   "aml_limit": aml_time_limit(job.config.get("maxTrialDuration"))},
        ))

    async def _submit_with_retries(self, job: JobRequest, target: AmlTarget) -> tuple[str, str]:
        # Only the calls to Azure ML take the (serialized) submission thread; the snapshot and the
        # run config are built beside it.
        try:
            snapshot, config = await asyncio.to_thread(self._prepare_blocking, job, target)
        except PermanentSubmitError:
            raise
        except Exception as exc:
            raise PermanentSubmitError(f"cannot build the AML job: {type(exc).__name__}: {exc}") from exc
        try:
            return await self._submit_retrying(job, target, config)
        finally:
            # AML has uploaded the snapshot (the stand-in copied it) by now.
            await asyncio.to_thread(shutil.rmtree, snapshot, True)

    async def _submit_retrying(self, job: JobRequest, target: AmlTarget, config: Any) -> tuple[str, str]:
        policy = self.options.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                return await self._in(self._submit_pool, self._submit_blocking, job, target, config)
            except PermanentSubmitError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
                auth_refused = is_auth_error(exc) and not isinstance(exc, SubmitError)
                if auth_refused:
                    self._drop_credential(exc)  # the next attempt signs in again, maybe otherwise
                if not (is_transient(exc) or isinstance(exc, SubmitError) or auth_refused):
                    raise PermanentSubmitError(f"Azure ML refused the run: {reason}") from exc
                if attempt == policy.attempts:
                    raise SubmitError(f"Azure ML still failing after {attempt} attempts: {reason}") from exc
                delay = policy.delay(attempt)
                log.warning("submitting trial %s: transient error (attempt %d/%d), retry in %.1f s: %s",
                            job.who.trial_id, attempt, policy.attempts, delay, reason)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def kill(self, experiment_id: str, trial_id: str, status: TrialStatus, reason: str) -> bool:
        """Per-replica kills do not apply: AML runs are cancelled from the shared kill queue."""
        return False

    def running(self) -> dict[str, list[str]]:
        """None: AML runs carry no heartbeat, they are watched by tickets."""
        return {}

    async def close(self) -> None:
        """Stop the worker threads (runs go on: they live in Azure ML)."""
        self._submit_pool.shutdown(wait=False, cancel_futures=True)
        self._poll_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ reporting

    async def _report_end(self, who: TrialIdentity, status: TrialStatus, error: str | None,
                          job_url: str | None, backend_status: str) -> None:
        await self.report(TrialStatusChanged(
            message_id=f"{who.experiment_id}-{who.trial_id}-{who.attempt}-aml-end",
            experiment_id=who.experiment_id, trial_id=who.trial_id, parameter_id=who.sequence_id,
            attempt=who.attempt, status=status, error=error, job_url=job_url, backend_status=backend_status,
        ))

    async def _kill_request(self, experiment_id: str, trial_id: str) -> dict[str, Any] | None:
        found = await self.store.read_json(Layout(experiment_id).trial_doc(trial_id))
        return (found[0] if found else {}).get("kill")

    # ------------------------------------------------------------------ watching

    async def on_watch(self, ticket: Ticket) -> None:
        """Handle an ``aml.watch`` ticket: check the run, report changes, re-publish until it ends."""
        if ticket.purpose != "aml.watch" or ticket.trial_id is None:
            raise PermanentError(f"the AML watcher does not handle {ticket.purpose} tickets")
        if ticket.due > datetime.now(UTC):
            await self.publish_ticket(ticket)
            return
        state = dict(ticket.state)
        who = TrialIdentity(ticket.experiment_id, ticket.trial_id, int(state.get("parameter_id", 0)),
                            int(state.get("attempt", 1)))
        try:
            status, details = await self._in(self._poll_pool, self._poll_blocking, state["workspace"],
                                             state["run_id"])
        except Exception as exc:
            await self._watch_failed(ticket, who, state, exc)
            return
        state["errors"] = 0
        if await self._handle_status(who, state, status, details):
            return  # the run ended: the chain stops here
        state["last_status"] = status
        if time.time() - float(state.get("beat_at", 0.0)) >= self.options.heartbeat_seconds:
            # The dispatcher's sign that this watch lives: silence means its ticket was lost.
            await self.report(TrialHeartbeat(experiment_id=who.experiment_id, trial_ids=[who.trial_id],
                                             replica="aml-watch"))
            state["beat_at"] = time.time()
        await self._next_check(ticket, state, self.options.poll_seconds)

    async def _handle_status(self, who: TrialIdentity, state: dict[str, Any], status: str,
                             details: dict[str, Any] | None) -> bool:
        """Report what changed; True when the run has ended."""
        job_url = state.get("job_url")
        if is_terminal(status):
            kill = await self._kill_request(who.experiment_id, who.trial_id)
            canceled_as = TrialStatus(kill["status"]) if kill else TrialStatus.USER_CANCELED
            trial_status = trial_status_for(status, canceled_as=canceled_as)
            error = failure_reason(details or {})
            if status == AmlRunStatus.CANCELED and kill and not error:
                error = kill.get("reason")
            elif status == AmlRunStatus.CANCELED and not error:
                limit = state.get("aml_limit")
                error = "cancelled in Azure ML, not by tunebus"
                if limit:
                    error += f": in the studio, or by Azure ML's own time limit ({limit} s from submission)"
            await self._report_end(who, trial_status, error, job_url, status)
            return True
        if status == AmlRunStatus.NOT_RESPONDING:
            since = float(state.setdefault("not_responding_since", time.time()))
            if time.time() - since > self.options.not_responding_limit:
                limit = self.options.not_responding_limit
                outcome = "cancelled"
                try:
                    await self._in(self._poll_pool, self._cancel_blocking, state["workspace"],
                                   state["run_id"])
                except Exception as exc:  # the trial fails either way; say the run may live on
                    log.error("cancelling unresponsive AML run %s: %r", state["run_id"], exc)
                    outcome = f"cancel NOT confirmed ({type(exc).__name__}: {exc})"
                await self._report_end(who, TrialStatus.FAILED,
                                       f"AML run NotResponding for over {limit:.0f} s; {outcome}",
                                       job_url, status)
                return True
        else:
            state.pop("not_responding_since", None)
        if trial_status_for(status) == TrialStatus.RUNNING and not state.get("reported_running"):
            await self.report(TrialStatusChanged(
                message_id=f"{who.experiment_id}-{who.trial_id}-{who.attempt}-aml-running",
                experiment_id=who.experiment_id, trial_id=who.trial_id, parameter_id=who.sequence_id,
                attempt=who.attempt, status=TrialStatus.RUNNING, job_url=job_url, backend_status=status,
            ))
            state["reported_running"] = True
        elif status != state.get("last_status"):
            log.info("trial %s/%s: AML run %s is %s", who.experiment_id, who.trial_id, state["run_id"],
                     status)
        return False

    async def _watch_failed(self, ticket: Ticket, who: TrialIdentity, state: dict[str, Any],
                            exc: Exception) -> None:
        errors = int(state.get("errors", 0)) + 1
        state["errors"] = errors
        if is_auth_error(exc):
            self._drop_credential(exc)
        reason = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        if not is_transient(exc) and errors >= WATCH_PERMANENT_LIMIT:
            await self._report_end(who, TrialStatus.FAILED,
                                   f"cannot check AML run {state.get('run_id')}: {reason}",
                                   state.get("job_url"), str(state.get("last_status")))
            return
        delay = min(WATCH_MAX_BACKOFF, self.options.poll_seconds * 2 ** min(errors, 10))
        log.warning("checking AML run %s failed (%d in a row), next check in %.0f s: %s",
                    state.get("run_id"), errors, delay, reason)
        await self._next_check(ticket, state, delay)

    async def _next_check(self, ticket: Ticket, state: dict[str, Any], delay: float) -> None:
        await self.publish_ticket(Ticket(
            experiment_id=ticket.experiment_id, purpose="aml.watch", trial_id=ticket.trial_id,
            due=datetime.now(UTC) + timedelta(seconds=delay), state=state,
        ))

    # ------------------------------------------------------------------ cancelling

    async def on_kill(self, msg: TrialKill) -> None:
        """Handle ``trial.kill`` from the shared AML kill queue: cancel the trial's run if it has one."""
        layout = Layout(msg.experiment_id)
        found = await self.store.read_json(layout.trial_doc(msg.trial_id))
        if found is None:
            try:
                experiment = await read_experiment_doc(self.store, msg.experiment_id)
            except BadExperimentDocument as exc:
                raise PermanentError(str(exc)) from None
            platform = (experiment.config if experiment else {}).get("trainingService") or {}
            if platform.get("platform") != "aml":
                return  # a local trial: its replica's own queue handles it
        elif found[0].get("platform") != "aml":
            return
        if msg.status not in TERMINAL_TRIAL_STATUSES:
            raise PermanentError(f"a kill must end the trial, not make it {msg.status}")

        def mark(doc: dict[str, Any]) -> None:
            doc.setdefault("kill", {"status": msg.status.value, "reason": msg.reason,
                                    "time": datetime.now(UTC).isoformat()})

        doc = await self._update_trial_doc(msg.experiment_id, msg.trial_id, mark)
        runs = doc.get("runs") or {}
        if not runs:
            log.info("kill of trial %s/%s recorded before its run exists", msg.experiment_id, msg.trial_id)
            return
        latest = runs[max(runs, key=int)]
        try:
            status = await self._in(self._poll_pool, self._cancel_blocking, doc["workspace"],
                                    latest["run_id"])
        except CancelNotConfirmedError:
            raise  # transient: the delivery comes back and the cancel is sent again
        except Exception as exc:
            if is_transient(exc) or is_auth_error(exc):
                raise TransientError(f"cancelling AML run {latest['run_id']}: {exc}") from exc
            raise PermanentError(f"cannot cancel AML run {latest['run_id']}: {exc}") from exc
        log.info("cancelled AML run %s of trial %s/%s (%s; it was %s)", latest["run_id"], msg.experiment_id,
                 msg.trial_id, msg.reason, status)

