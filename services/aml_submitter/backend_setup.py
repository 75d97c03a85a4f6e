"""The submitter's backends as its settings make them: the trials' sandbox, the AML backend
(azureml-core, azure-ai-ml, or the local stand-in when asked for)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from shared.bus import Bus
from shared.sandbox import ALWAYS_PASSED, Sandbox, SandboxError
from shared.storage import BlobStore

from .aml.backend import AmlBackend
from .aml.options import AmlOptions
from .aml.sdk import azure_ai_ml_api, azureml_api, standin_api, standin_v2_api
from .backend import Reporter
from .settings import SubmitterSettings

__all__ = ["aml_backend", "standin_sandbox", "trial_sandbox"]

log = logging.getLogger("tunebus.submitter")


def trial_sandbox(settings: SubmitterSettings) -> tuple[Sandbox | None, str | None]:
    """How trials are sandboxed here, or why they cannot be (every local trial then fails so)."""
    try:
        return Sandbox.for_this_process(settings.trial_user, settings.trial_env_passthrough.split(",")), None
    except SandboxError as exc:
        return None, str(exc)


def standin_sandbox(sandbox: Sandbox | None, work_dir: Path) -> dict[str, Any]:
    """The stand-in's runs sandboxed like local trials (see StandinSettings.sandbox)."""
    if sandbox is None:
        raise SandboxError("the AML stand-in runs trials like local ones, and those cannot be sandboxed")
    venv_bin = Path(sys.executable).parent
    path_first, pythonpath = sandbox.trial_interpreter(venv_bin, work_dir / ".trial-python")
    user = sandbox.user
    return {"prefix": sandbox.prefix(), "owner": None if user is None else [user.uid, user.gid],
            "path_first": str(path_first), "pythonpath": pythonpath,
            "allowed": [*ALWAYS_PASSED, *sandbox.passthrough]}


def aml_backend(settings: SubmitterSettings, report: Reporter, store: BlobStore, bus: Bus,
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
            sandbox=standin_sandbox(sandbox, Path(settings.work_dir)),
        )
        log.warning("TUNEBUS_AML_STANDIN=1: `platform: aml` trials run on the LOCAL STAND-IN (SDK %s), "
                    "NOT on Azure ML (run registry %s). For tests only.", settings.aml_sdk, standin.registry)
        api: Callable[[], Any] = partial(standin_v2_api if settings.aml_sdk == "v2" else standin_api, standin)
    else:
        api = azure_ai_ml_api if settings.aml_sdk == "v2" else azureml_api
    # Credentials are the standard Azure variables, read once here (see aml/auth.py).
    azure_env = {k: v for k, v in os.environ.items()
                 if k.startswith(("AZURE_", "AZUREML_", "MSI_", "IDENTITY_")) or k == "PATH"}
    return AmlBackend(store=store, report=report, publish_ticket=bus.publish_ticket,
                      work_dir=Path(settings.work_dir), api=api, env=azure_env, options=options,
                      deployment_id=deployment, secrets=settings.known_secrets())
