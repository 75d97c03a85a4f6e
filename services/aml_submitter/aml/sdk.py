"""The SDK façades the AML backend talks to: one namespace each for azureml-core (v1),
azure-ai-ml (v2) and their stand-ins (NOT Azure), with the same names, so that the backend and
:class:`~.client.AmlClient` never know which is in use. Each SDK is imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..backend import JobRequest
from .job import AmlTarget, build_script_run_config, import_azureml

__all__ = ["azure_ai_ml_api", "azureml_api", "standin_api", "standin_v2_api"]


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

    from aml_standin import v1 as standin

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

    from aml_standin.v2 import StandinMLClient

    from .v2 import v2_api

    return v2_api(partial(StandinMLClient, settings=settings), standin=True)
