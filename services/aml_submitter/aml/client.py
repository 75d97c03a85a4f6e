"""The blocking side of the AML backend: one signed-in client of Azure ML per replica.

It signs in (the first credential the workspace accepts, a failure remembered for a minute),
loads workspaces, compute targets and runs (cached per replica), builds a trial's snapshot and
job, submits a run or adopts the one that exists under its fixed id, reads a run's status and
cancels it, confirming the cancel took. The SDKs are blocking and their calls on one workspace
client are serialized: :class:`~.backend.AmlBackend` calls this only from its thread pools,
never on the event loop. ``api`` is the SDK façade in use (:mod:`.sdk`: azureml-core,
azure-ai-ml, or a stand-in).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shared.bus import TransientError

from ..backend import JobRequest, PermanentSubmitError, SubmitError
from .auth import NoCredentialError, resolve_auth
from .errors import is_auth_error, is_conflict, is_not_found
from .job import DEPLOYMENT_TAG, AmlTarget, aml_experiment_name, build_snapshot, run_id_for, run_tags
from .options import AmlOptions
from .status import AmlRunStatus, is_terminal

__all__ = ["AmlClient", "CancelNotConfirmedError", "ForeignRunError"]

log = logging.getLogger("tunebus.submitter.aml")

#: How long a failed credential look-up is remembered (every trial would wait for it again).
AUTH_FAILURE_TTL = 60.0
#: Run objects a replica keeps between checks (the runs it watches most recently).
RUN_CACHE_SIZE = 4096


class CancelNotConfirmedError(TransientError):
    """Azure ML still reports the run active after every cancel sent: it may still be billing."""


class ForeignRunError(PermanentSubmitError):
    """A run with this trial's run id exists but was not made by this deployment: never adopted."""



class AmlClient:
    """Azure ML (or a stand-in) as the backend's threads see it; safe to call from several."""

    def __init__(self, *, api: Callable[[], SimpleNamespace], env: Mapping[str, str], deployment_id: str,
                 work_dir: Path, options: AmlOptions, secrets: Mapping[str, str] | None = None) -> None:
        self.env = dict(env)
        self.deployment_id = deployment_id
        self.work_dir = work_dir
        self.options = options
        self.secrets = dict(secrets or {})  # the service's own: never in a snapshot
        self._api_factory = api
        self._api: SimpleNamespace | None = None
        self._lock = threading.Lock()
        self._workspaces: dict[tuple[str, str, str], Any] = {}
        self._compute: dict[tuple[str, str, str, str], Any] = {}
        self._runs: OrderedDict[str, Any] = OrderedDict()
        self._auth: Any = None
        self._auth_failure: tuple[float, PermanentSubmitError] | None = None

    @property
    def api(self) -> SimpleNamespace:
        """The Workspace/ComputeTarget/Experiment/Run classes in use (real or stand-in)."""
        with self._lock:
            if self._api is None:
                self._api = self._api_factory()
            return self._api

    def credential(self, probe: Callable[[Any], Any]) -> tuple[Any, Any]:
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
                self.drop_credential(exc)
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

    def drop_credential(self, exc: BaseException) -> None:
        """Forget the credential and everything loaded with it: the next call signs in again."""
        log.warning("AML credential refused (%s): signing in again at the next call", exc)
        with self._lock:
            self._auth = None
            self._workspaces.clear()
            self._compute.clear()
            self._runs.clear()

    def workspace(self, target: AmlTarget) -> Any:
        key = target.workspace_key
        with self._lock:
            if key in self._workspaces:
                return self._workspaces[key]

        def load(auth: Any) -> Any:
            return self.api.Workspace(target.subscription_id, target.resource_group, target.workspace_name,
                                      auth=auth)

        workspace = load(None) if self.api.standin else self.credential(load)[1]
        with self._lock:
            return self._workspaces.setdefault(key, workspace)

    def compute_target(self, target: AmlTarget, workspace: Any) -> Any:
        key = (*target.workspace_key, target.compute_target)
        with self._lock:
            if key in self._compute:
                return self._compute[key]
        compute = self.api.ComputeTarget(workspace, target.compute_target)  # raises if it does not exist
        with self._lock:
            return self._compute.setdefault(key, compute)

    def prepare(self, job: JobRequest, target: AmlTarget) -> tuple[Path, Any]:
        """Build the snapshot folder and the ScriptRunConfig: local work, no service call."""
        who = job.who
        snapshot = self.work_dir / who.experiment_id / "aml-snapshots" / f"{who.trial_id}-{who.attempt}"
        shutil.rmtree(snapshot, ignore_errors=True)
        build_snapshot(job, snapshot, self.secrets)
        return snapshot, self.api.build_job(job, target, snapshot)

    def find_run(self, workspace: Any, run_id: str) -> Any | None:
        """The run with this id, None if Azure ML says 404; other errors are raised."""
        try:
            return self.api.Run.get(workspace, run_id)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    def adopt(self, run: Any, job: JobRequest) -> tuple[str, str]:
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

    def submit(self, job: JobRequest, target: AmlTarget, config: Any) -> tuple[str, str]:
        """Submit the run, or adopt it if this attempt exists already; (run id, portal URL)."""
        workspace = self.workspace(target)
        who = job.who
        run_id = run_id_for(who, self.deployment_id)
        existing = self.find_run(workspace, run_id)
        if existing is not None:
            return self.adopt(existing, job)
        self.compute_target(target, workspace)  # fails (permanently) when the cluster does not exist
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
            found = self.find_run(workspace, run_id)
        except Exception as lookup:
            # Unknown whether the run exists: retry (the next attempt looks it up first).
            raise SubmitError(f"submitting failed ({type(exc).__name__}: {exc}) and looking the run "
                              f"up failed too ({type(lookup).__name__}: {lookup})") from exc
        if found is not None:
            log.warning("submitting AML run %s raised %s, but the run exists: adopted", run_id,
                        type(exc).__name__)
            return self.adopt(found, job)
        if is_conflict(exc):  # it exists, but is not visible yet
            raise SubmitError(f"AML run {run_id} exists (409) but cannot be read yet: {exc}") from exc
        raise exc

    def run(self, coords: Mapping[str, str], run_id: str) -> Any:
        """The run object, loaded once per replica (``Run.get`` costs two service calls)."""
        with self._lock:
            if run_id in self._runs:
                self._runs.move_to_end(run_id)
                return self._runs[run_id]
        target = AmlTarget(coords["subscription_id"], coords["resource_group"], coords["workspace_name"],
                           coords.get("compute_target", ""), coords.get("docker_image", ""))
        run = self.api.Run.get(self.workspace(target), run_id)
        with self._lock:
            self._runs[run_id] = run
            while len(self._runs) > RUN_CACHE_SIZE:
                self._runs.popitem(last=False)
        return run

    def poll(self, coords: Mapping[str, str], run_id: str) -> tuple[str, dict[str, Any] | None]:
        run = self.run(coords, run_id)
        status = str(run.get_status())
        if not is_terminal(status):
            return status, None
        with self._lock:
            self._runs.pop(run_id, None)  # no more checks of this run
        return status, dict(run.get_details())

    def cancel(self, coords: Mapping[str, str], run_id: str) -> str:
        """Cancel the run and confirm it took; the status it had. :class:`CancelNotConfirmedError` if not.

        ``Run.cancel`` ignores the service's answer: only a later status (CancelRequested, or
        an end) shows that the cancel was accepted, so each cancel is followed by a check.
        """
        run = self.run(coords, run_id)
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
