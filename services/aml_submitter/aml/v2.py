"""Azure ML through SDK v2 (azure-ai-ml): one ``command`` job per trial attempt.

azureml-core (SDK v1) is out of support since 2026-06-30; azure-ai-ml is what new Azure ML users
have. :func:`v2_api` puts v2 behind the small interface the backend drives for v1, so that all the
backend does (look up before and after submitting, adopt by deployment tag, confirmed cancels,
watch tickets, kills) is the same code for both SDKs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..backend import JobRequest, PermanentSubmitError
from ..trial_env import trial_environment
from .auth import AuthMethod
from .job import OUTPUT_DIR, AmlTarget, aml_experiment_name, aml_time_limit, run_command

__all__ = [
    "V2ComputeTarget",
    "V2Experiment",
    "V2Run",
    "V2Workspace",
    "auth_methods",
    "azure_ai_ml_api",
    "build_command_job",
    "import_azure_ai_ml",
    "v2_api",
]

_ARM_SCOPE = "https://management.azure.com/.default"
_ERROR_CHARS = 4000


def import_azure_ai_ml() -> Any:
    """The ``azure.ai.ml`` module; a PermanentSubmitError saying how to install it if absent."""
    try:
        import azure.ai.ml
    except ImportError as exc:
        raise PermanentSubmitError(
            "TUNEBUS_AML_SDK=v2 needs azure-ai-ml in the submitter's environment: "
            "pip install 'tunebus[aml]' (or azure-ai-ml>=1.35,<2)"
        ) from exc
    return azure.ai.ml


def build_command_job(job: JobRequest, target: AmlTarget, snapshot: Path) -> Any:
    """The real ``azure.ai.ml`` command job of one trial attempt (name and tags set at submit).

    The job: code = the snapshot folder, command = ``bash
    .tunebus/run.sh`` (the run script), environment = an anonymous ``Environment(image=docker_image)``
    (the image as is, nothing installed), compute = ``computeTarget``, the trial's environment
    variables, and ``timeout`` = Azure ML's own limit (past tunebus's, see ``aml_time_limit``).
    """
    ml = import_azure_ai_ml()
    from azure.ai.ml.entities import Environment

    return ml.command(
        code=str(snapshot),
        command=run_command(),
        environment=Environment(image=target.docker_image),
        compute=target.compute_target,
        environment_variables=trial_environment(job.who, job.parameters, metrics_url=job.metrics_url,
                                                output_dir=OUTPUT_DIR, platform="aml"),
        experiment_name=aml_experiment_name(job.who.experiment_id),
        display_name=f"trial {job.who.trial_id} (attempt {job.who.attempt})",
        timeout=aml_time_limit(job.config.get("maxTrialDuration")),
    )


# ---------------------------------------------------------------- the backend's interface over MLClient


class V2Workspace:
    """An ``MLClient`` for one workspace, loaded once to prove the credential reaches it."""

    def __init__(self, client_factory: Callable[..., Any], subscription_id: str, resource_group: str,
                 workspace_name: str, auth: Any = None) -> None:
        self.client = client_factory(credential=auth, subscription_id=subscription_id,
                                     resource_group_name=resource_group, workspace_name=workspace_name)
        self.name = workspace_name
        self.client.workspaces.get(workspace_name)  # 401/403 here: this credential cannot reach it


class V2ComputeTarget:
    """The compute cluster, which must exist (``ResourceNotFoundError`` otherwise)."""

    def __init__(self, workspace: V2Workspace, name: str) -> None:
        self.compute = workspace.client.compute.get(name)
        self.name = name


class V2Experiment:
    """Submits command jobs under one experiment name."""

    def __init__(self, workspace: V2Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name

    def submit(self, config: Any, tags: dict[str, str] | None = None, run_id: str | None = None) -> V2Run:
        """``jobs.create_or_update`` of the command job, named ``run_id``, tags in the same request."""
        config.name = run_id
        config.experiment_name = self.name
        config.tags = dict(tags or {})
        created = self.workspace.client.jobs.create_or_update(config)
        return V2Run(self.workspace, created)


class V2Run:
    """A submitted job, with v1's ``Run`` methods (the status is read anew at each call)."""

    def __init__(self, workspace: V2Workspace, job: Any) -> None:
        self.workspace = workspace
        self.job = job
        self.id = str(job.name)

    @staticmethod
    def get(workspace: V2Workspace, run_id: str) -> V2Run:
        """``jobs.get``: ``ResourceNotFoundError`` (404) when there is no such job."""
        return V2Run(workspace, workspace.client.jobs.get(run_id))

    def _refresh(self) -> Any:
        self.job = self.workspace.client.jobs.get(self.id)
        return self.job

    def get_status(self) -> str:
        return str(self._refresh().status)

    def get_details(self) -> dict[str, Any]:
        """Status and tags, and for a failed job its error where the job object carries one.

        azure-ai-ml's ``Job`` has no error field of its own; a stand-in's or a future SDK's
        ``error`` is used when present, else the studio URL is the place to read it.
        """
        job = self._refresh()
        details: dict[str, Any] = {"runId": self.id, "status": str(job.status), "tags": dict(job.tags or {})}
        error = getattr(job, "error", None)
        if error:
            details["error"] = error
        elif str(job.status) == "Failed":
            details["error"] = {"message": f"the job failed; its logs: {job.studio_url}"[:_ERROR_CHARS]}
        return details

    def get_portal_url(self) -> str:
        return str(self.job.studio_url)

    def get_tags(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.job.tags or {}).items()}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags are updatable on an existing job: the job is sent again with them."""
        job = self._refresh()
        job.tags = {**(job.tags or {}), **tags}
        self.job = self.workspace.client.jobs.create_or_update(job)

    def cancel(self) -> None:
        """``begin_cancel``, not waited for (the backend reads the status to confirm it)."""
        self.workspace.client.jobs.begin_cancel(self.id)


# ---------------------------------------------------------------- credentials (azure-identity)


def _verified(credential: Any) -> Any:
    credential.get_token(_ARM_SCOPE)  # a token: what "it signs in" means; the workspace probe follows
    return credential


def _service_principal(env: Mapping[str, str]) -> Any:
    names = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set")
    from azure.identity import ClientSecretCredential

    return _verified(ClientSecretCredential(env["AZURE_TENANT_ID"], env["AZURE_CLIENT_ID"],
                                            env["AZURE_CLIENT_SECRET"]))


def _managed_identity(env: Mapping[str, str]) -> Any:
    from azure.identity import ManagedIdentityCredential

    client_id = env.get("AZURE_CLIENT_ID") if not env.get("AZURE_CLIENT_SECRET") else None
    credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    return _verified(credential)


def _azure_cli(env: Mapping[str, str]) -> Any:
    from azure.identity import AzureCliCredential

    return _verified(AzureCliCredential())


def auth_methods() -> list[AuthMethod]:
    """Service principal (``ClientSecretCredential``), managed identity, the Azure CLI login
    (``AzureCliCredential``, which refreshes its tokens itself), azure-identity's, in that order:
    each proven by a token and then by the workspace answering."""
    return [
        AuthMethod("service principal (AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET)",
                   _service_principal),
        AuthMethod("managed identity", _managed_identity),
        AuthMethod("Azure CLI login (az login)", _azure_cli),
    ]


# ---------------------------------------------------------------- the api namespaces


def v2_api(client_factory: Callable[..., Any], *, standin: bool) -> SimpleNamespace:
    """The backend's interface over an ``MLClient`` class (azure-ai-ml's, or the v2 stand-in's):

    ==========================  ==============================================================
    backend's call              v2
    ==========================  ==============================================================
    ``Workspace(s, rg, w, a)``  ``MLClient(a, s, rg, w)`` then ``workspaces.get(w)`` (the probe:
                                a credential without access fails here, not at the first trial)
    ``ComputeTarget(ws, n)``    ``ml_client.compute.get(n)`` (ResourceNotFoundError if missing)
    ``Experiment.submit``       ``ml_client.jobs.create_or_update(command(...))``, job name = the
                                run id, tags and experiment name in the same request
    ``Run.get(ws, id)``         ``ml_client.jobs.get(id)`` (ResourceNotFoundError: 404)
    ``run.get_status()``        ``ml_client.jobs.get(id).status`` (the same words as v1)
    ``run.cancel()``            ``ml_client.jobs.begin_cancel(id)`` (not waited for: the backend
                                confirms a cancel by reading the status again)
    ``run.get_portal_url()``    the job's ``studio_url``
    ==========================  ==============================================================
    """
    return SimpleNamespace(
        Workspace=partial(V2Workspace, client_factory), ComputeTarget=V2ComputeTarget,
        Experiment=V2Experiment, Run=V2Run, build_job=build_command_job,
        auth_methods=None if standin else auth_methods(), standin=standin, sdk="v2",
    )


def azure_ai_ml_api() -> SimpleNamespace:
    """azure-ai-ml's MLClient behind the backend's interface (imported on first use)."""
    ml = import_azure_ai_ml()
    return v2_api(ml.MLClient, standin=False)
