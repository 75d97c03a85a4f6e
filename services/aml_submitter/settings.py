"""The submitter's settings (``TUNEBUS_`` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.sandbox import DEFAULT_TRIAL_USER
from shared.settings import CommonSettings

__all__ = ["SubmitterSettings"]


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
