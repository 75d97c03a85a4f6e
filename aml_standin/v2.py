"""NOT AZURE. The stand-in at SDK v2's boundary: an ``MLClient`` look-alike for tests.

Selected by ``TUNEBUS_AML_STANDIN=1`` with ``TUNEBUS_AML_SDK=v2``. It takes the real
``azure.ai.ml`` command job the v2 backend builds (:func:`.v2.build_command_job`) and runs it
with the v1 stand-in's machinery (:mod:`.v1`: the same run registry, runner process,
statuses in AML's order, minimal environment, SDK snapshot rules, injected faults), reading
from the job what Azure ML would: ``code``, ``command``, ``environment.image``,
``environment_variables``, ``compute``, ``limits.timeout``, ``name``, ``experiment_name``, ``tags``.

Errors are azure-core's own classes, as azure-ai-ml raises them (:class:`_Jobs` says which).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import v1 as standin
from .faults import take_fault
from .v1 import PORTAL_SCHEME, StandinSettings

__all__ = ["StandinMLClient"]

log = logging.getLogger("tunebus.submitter.aml.standin")


def _http_error(status: int, message: str) -> Exception:
    """azure-core's exception for that status, shaped as azure-ai-ml raises it."""
    from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

    kind = {404: ResourceNotFoundError, 409: ResourceExistsError}.get(status, HttpResponseError)
    error = kind(message=message)
    error.status_code = status
    return error


class _Workspaces:
    def __init__(self, client: StandinMLClient) -> None:
        self._client = client

    def get(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, location="not-azure")


class _Computes:
    def __init__(self, client: StandinMLClient) -> None:
        self._client = client

    def get(self, name: str) -> SimpleNamespace:
        if name not in self._client.settings.computes:
            raise _http_error(404, f"Compute {name} not found in workspace {self._client.workspace_name}")
        return SimpleNamespace(name=name, type="amlcompute")


class _Jobs:
    """``ml_client.jobs``: create_or_update, get, begin_cancel, on the stand-in's run registry.

    Errors: ``ResourceNotFoundError`` (404) for a missing job or compute, ``ResourceExistsError``
    (409), ``HttpResponseError`` with ``status_code`` for injected faults. Faults
    (``standin.inject_fault``): ``submit`` fails before the job exists; ``tags`` fails *after* it
    exists (a response lost on the way back: v2 sends the tags with the job); ``get``; ``cancel``
    (silently does nothing).
    """

    def __init__(self, client: StandinMLClient) -> None:
        self._client = client
        self._settings = client.settings

    def _workspace(self) -> standin.Workspace:
        return standin.Workspace("", "", self._client.workspace_name, settings=self._settings)

    def create_or_update(self, job: Any) -> SimpleNamespace:
        """Create the job (from the real command job), or update the tags of one that exists."""
        started = time.monotonic()
        registry = self._settings.registry
        if (registry / str(job.name) / "spec.json").exists():
            run = standin.Run.get(self._workspace(), str(job.name))
            run.set_tags(dict(job.tags or {}))  # v2 may update an existing job's tags
            return self.get(str(job.name))
        log.warning("AML STAND-IN v2 (not Azure ML): creating job %s of experiment %s on this machine",
                    job.name, job.experiment_name)
        status = take_fault(registry, "submit")
        if status is not None:
            raise _http_error(status, "injected fault: the job was not created")
        limits = getattr(job, "limits", None)
        try:
            standin.create_run(self._settings, standin.RunSpec(
                run_id=str(job.name), experiment=str(job.experiment_name),
                workspace=self._client.workspace_name,
                target=str(job.compute), image=str(job.environment.image), command=str(job.command),
                environment_variables={str(k): str(v) for k, v in (job.environment_variables or {}).items()},
                max_run_duration_seconds=getattr(limits, "timeout", None),
            ), Path(str(job.code)))
        except standin.RunAlreadyExists:
            raise _http_error(409, f"Job {job.name} already exists") from None
        standin.Run.get(self._workspace(), str(job.name)).set_tags(dict(job.tags or {}))
        time.sleep(max(0.0, self._settings.submit_latency - (time.monotonic() - started)))
        status = take_fault(registry, "tags")
        if status is not None:
            raise _http_error(status, "injected fault: the job exists, the answer was lost")
        return self.get(str(job.name))

    def get(self, name: str) -> SimpleNamespace:
        """The job as azure-ai-ml's ``Job``: name, status, tags, studio_url (and error if failed)."""
        status = take_fault(self._settings.registry, "get")
        if status is not None:
            raise _http_error(status, "injected fault")
        try:
            run = standin.Run.get(self._workspace(), name)
            details = run.get_details()
        except standin.RunNotFound:
            raise _http_error(404, f"Job {name} not found") from None
        return SimpleNamespace(
            name=name, status=details["status"], tags=details["tags"], experiment_name=run.experiment.name,
            studio_url=f"{PORTAL_SCHEME}not-azure/v2/{self._client.workspace_name}/jobs/{name}",
            error=details.get("error"),
        )

    def begin_cancel(self, name: str) -> SimpleNamespace:
        """Ask the job to stop; returns a poller-like object (the caller does not wait)."""
        try:
            run = standin.Run.get(self._workspace(), name)
        except standin.RunNotFound:
            raise _http_error(404, f"Job {name} not found") from None
        run.cancel()
        return SimpleNamespace(result=lambda timeout=None: None, done=lambda: True)


class StandinMLClient:
    """Stands in for ``azure.ai.ml.MLClient``: workspaces, compute and jobs, on this machine."""

    def __init__(self, credential: Any = None, subscription_id: str | None = None,
                 resource_group_name: str | None = None, workspace_name: str | None = None, *,
                 settings: StandinSettings) -> None:
        self.settings = settings
        self.subscription_id = subscription_id
        self.resource_group_name = resource_group_name
        self.workspace_name = str(workspace_name)
        settings.registry.mkdir(parents=True, exist_ok=True)
        self.workspaces = _Workspaces(self)
        self.compute = _Computes(self)
        self.jobs = _Jobs(self)
