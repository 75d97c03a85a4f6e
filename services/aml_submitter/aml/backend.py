"""The AML backend: one Azure ML run per trial attempt, watched by tickets, cancelled by any replica.

One module past ~400 lines on purpose: its submit, watch and cancel paths share one client, its
thread pools and the trial's blob, and apart they would pass all three around.
"""
from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from shared.bus import PermanentError, TransientError
from shared.checkpoints import AML_CHECKPOINTS_REFUSED, managed_checkpoints
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
from .client import AmlClient, CancelNotConfirmedError
from .errors import is_auth_error, is_transient
from .job import AmlTarget, aml_experiment_name, aml_time_limit, import_azureml
from .options import AmlOptions
from .status import ERROR_CHARS, AmlRunStatus, failure_reason, is_terminal, trial_status_for

__all__ = ["AmlBackend"]

log = logging.getLogger("tunebus.submitter.aml")

T = TypeVar("T")
TicketPublisher = Callable[[Ticket], Awaitable[None]]

#: Consecutive permanent errors while watching a run before its trial is failed.
WATCH_PERMANENT_LIMIT = 5
#: Longest wait between two checks of a run whose checks keep failing.
WATCH_MAX_BACKOFF = 300.0


class AmlBackend:
    """Runs trials as Azure ML runs (or on the stand-in); one instance per submitter replica.

    azureml-core is blocking, and its calls on one workspace client are serialized: they run in
    two bounded thread pools — submissions (``TUNEBUS_AML_SUBMIT_THREADS``, 1 by default) and
    status polls / cancels (``TUNEBUS_AML_POLL_THREADS``) — never on the event loop.
    Throttling (429), 5xx and network errors (by the HTTP status the SDK wrote into its message,
    :mod:`.errors`) are retried with exponential back-off and then handed back as
    :class:`SubmitError` (the delivery is retried); an authentication error drops the credential
    (the next attempt signs in again); anything else fails the trial with the reason
    (:class:`PermanentSubmitError`).
    """

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
        self.report = report
        self.publish_ticket = publish_ticket
        self.options = options or AmlOptions()
        self.client = AmlClient(api=api, env=env, deployment_id=deployment_id, work_dir=work_dir,
                                options=self.options, secrets=secrets)
        self._submit_pool = ThreadPoolExecutor(self.options.submit_threads, thread_name_prefix="aml-submit")
        self._poll_pool = ThreadPoolExecutor(self.options.poll_threads, thread_name_prefix="aml-poll")

    @property
    def api(self) -> SimpleNamespace:
        """The SDK façade in use (real or stand-in)."""
        return self.client.api

    async def warm_up(self, timeout: float = 120.0) -> None:
        """Import the SDK in the submission thread before the first trial needs it.

        azureml-core takes about a second to import, azure-ai-ml several: a replica is not
        ready to submit before that, so its start waits for it (bounded) rather than the
        first trials. An SDK that is absent is logged here and reported per trial.
        """
        def load() -> None:
            try:
                if self.client.api.sdk == "v2":
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
        """Submit the trial's AML run, record it, report WAITING and start watching it.

        On the replica that took the delivery: credential → ``Workspace`` → ``Run.get(run id)``
        first: a run that exists (an earlier attempt of this submission got through, then the
        replica crashed before recording it) is adopted; only on a 404 → ``ComputeTarget`` →
        snapshot + ``ScriptRunConfig`` → ``Experiment(ws, "tunebus-<exp>").submit(config, tags,
        run_id=…)``. After *any* submit error the run is looked up again: azureml-core sets tags
        after the run exists (separate calls, which it retries for minutes), a 409 means an earlier
        submit got through, and a response can be lost on the way back; a run that exists is
        adopted (its tags set again), never left an orphan. The run id is fixed per trial attempt
        and carries the deployment's id (:mod:`shared.deployment`), so a run of another deployment
        sharing the workspace is never adopted. The run is recorded in the trial's blob
        (``Layout.trial_doc``), WAITING is reported with the portal URL, and an ``aml.watch``
        ticket is published.
        """
        who = job.who
        if managed_checkpoints(job.config):  # tunebus create refuses it; a published start may not
            raise PermanentSubmitError(AML_CHECKPOINTS_REFUSED)
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
                await self._in(self._poll_pool, self.client.cancel, coords, run_id)
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
            snapshot, config = await asyncio.to_thread(self.client.prepare, job, target)
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
                return await self._in(self._submit_pool, self.client.submit, job, target, config)
            except PermanentSubmitError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
                auth_refused = is_auth_error(exc) and not isinstance(exc, SubmitError)
                if auth_refused:
                    self.client.drop_credential(exc)  # the next attempt signs in again, maybe otherwise
                if not (is_transient(exc) or isinstance(exc, SubmitError) or auth_refused):
                    raise PermanentSubmitError(f"Azure ML refused the run: {reason}") from exc
                if attempt == policy.attempts:
                    raise SubmitError(f"Azure ML still failing after {attempt} attempts: {reason}") from exc
                delay = policy.delay(attempt)
                log.warning("submitting trial %s: transient error (attempt %d/%d), retry in %.1f s: %s",
                            job.who.trial_id, attempt, policy.attempts, delay, reason)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def kill(self, experiment_id: str, trial_id: str, status: TrialStatus, reason: str,
                   attempt: int | None = None) -> bool:
        """Per-replica kills do not apply: AML runs are cancelled from the shared kill queue."""
        return False

    def running(self) -> dict[str, dict[str, int]]:
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
        """Handle an ``aml.watch`` ticket: check the run, report changes, re-publish until it ends.

        On any replica: load the run by id, map its status (:mod:`.status`), report RUNNING once
        and the end once (with AML's error and the portal URL). Nothing lives in a replica's
        memory: a replica killed mid-experiment leaves its tickets in the queues for the others.
        """
        if ticket.purpose != "aml.watch" or ticket.trial_id is None:
            raise PermanentError(f"the AML watcher does not handle {ticket.purpose} tickets")
        if ticket.due > datetime.now(UTC):
            await self.publish_ticket(ticket)
            return
        state = dict(ticket.state)
        who = TrialIdentity(ticket.experiment_id, ticket.trial_id, int(state.get("parameter_id", 0)),
                            int(state.get("attempt", 1)))
        try:
            status, details = await self._in(self._poll_pool, self.client.poll, state["workspace"],
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
                                             attempts={who.trial_id: who.attempt}, replica="aml-watch"))
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
                    await self._in(self._poll_pool, self.client.cancel, state["workspace"],
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
            self.client.drop_credential(exc)
        reason = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
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
        """Handle ``trial.kill`` from the shared AML kill queue: cancel the trial's run if it has one.

        Records the kill in the trial's blob and ``run.cancel()``, then *confirms* it:
        ``Run.cancel`` ignores the HTTP result, so the status is read again (CancelRequested or an
        end confirms it), the cancel re-sent, and after ``cancel_attempts`` a
        :class:`CancelNotConfirmedError` names the run (the kill delivery is retried). The watcher
        then reports the end with the status the kill asked for. A kill that arrives while the run
        is being submitted is found by the submitter in the trial's blob right after it submits.
        """
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
            status = await self._in(self._poll_pool, self.client.cancel, doc["workspace"],
                                    latest["run_id"])
        except CancelNotConfirmedError:
            raise  # transient: the delivery comes back and the cancel is sent again
        except Exception as exc:
            if is_transient(exc) or is_auth_error(exc):
                raise TransientError(f"cancelling AML run {latest['run_id']}: {exc}") from exc
            raise PermanentError(f"cannot cancel AML run {latest['run_id']}: {exc}") from exc
        log.info("cancelled AML run %s of trial %s/%s (%s; it was %s)", latest["run_id"], msg.experiment_id,
                 msg.trial_id, msg.reason, status)

