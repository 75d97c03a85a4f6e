"""Building one trial's Azure ML job: its snapshot folder and its ``ScriptRunConfig``.

The snapshot is what AML uploads and runs in: the experiment's code (with ``.nniignore`` /
``.amlignore`` applied, by :mod:`shared.code_archive`) plus the trial runtime, so that
``import nni`` finds tunebus's shim with no NNI installed in the image. The shim lives in
``.tunebus/nni`` and the command puts that folder first on ``PYTHONPATH``, so it is found
from any folder the trial command changes to, and never clashes with the user's files.

The job runs the configured docker image as is (``user_managed_dependencies``: the image's
own ``python3``, nothing installed by AML), with the trial's environment variables (identity,
parameters, and its results URL: one append blob, append-only SAS) as the run's runtime
variables. No account key is part of
any of it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.code_archive import (
    AML_RUNTIME_FILES,
    AML_SNAPSHOT_MAX_FILES,
    IGNORE_FILES,
    build_code_archive,
    extract_code_archive,
)

from ..backend import JobRequest, PermanentSubmitError
from ..trial_env import TRIAL_RUNTIME_DIR, TrialIdentity, trial_environment

__all__ = [
    "DEPLOYMENT_TAG",
    "OUTPUT_DIR",
    "RUNTIME_FOLDER",
    "RUN_SCRIPT",
    "AmlTarget",
    "aml_experiment_name",
    "aml_time_limit",
    "build_script_run_config",
    "build_snapshot",
    "import_azureml",
    "run_command",
    "run_id_for",
    "run_script",
    "run_tags",
]

#: Folder of the snapshot holding the ``nni`` shim (first on the trial's PYTHONPATH).
RUNTIME_FOLDER = ".tunebus"
#: NNI_OUTPUT_DIR of an AML trial, relative to the run's working folder; AML keeps ./outputs.
OUTPUT_DIR = "outputs"
#: The run script, relative to the snapshot folder.
RUN_SCRIPT = f"{RUNTIME_FOLDER}/run.sh"
#: The tag naming the deployment (see :mod:`shared.deployment`) that made a run.
DEPLOYMENT_TAG = "tunebus.deployment"
#: Azure ML's own limit is set this far past ``maxTrialDuration`` (at least; see aml_time_limit).
AML_LIMIT_MARGIN = 3600
_TAG_CHARS = 4000


def import_azureml() -> Any:
    """The ``azureml.core`` module; a PermanentSubmitError saying how to install it if absent."""
    try:
        import azureml.core
    except ImportError as exc:
        raise PermanentSubmitError(
            "platform aml needs azureml-core in the submitter's environment: "
            "pip install 'tunebus[aml]' (or azureml-core>=1.55)"
        ) from exc
    return azureml.core


@dataclass(frozen=True)
class AmlTarget:
    """Where an experiment's trials run: the workspace, the compute cluster and the image."""

    subscription_id: str
    resource_group: str
    workspace_name: str
    compute_target: str
    docker_image: str

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AmlTarget:
        """From a wire-form config (camelCase keys, as ``ExperimentConfig.to_wire`` writes them)."""
        service = config.get("trainingService") or {}
        try:
            return cls(
                subscription_id=str(service["subscriptionId"]),
                resource_group=str(service["resourceGroup"]),
                workspace_name=str(service["workspaceName"]),
                compute_target=str(service["computeTarget"]),
                docker_image=str(service.get("dockerImage") or "msranni/nni"),
            )
        except KeyError as exc:
            raise PermanentSubmitError(f"trainingService has no {exc.args[0]} (platform aml)") from None

    @property
    def workspace_key(self) -> tuple[str, str, str]:
        """What identifies the workspace (one client per workspace and replica)."""
        return (self.subscription_id, self.resource_group, self.workspace_name)


def aml_experiment_name(experiment_id: str) -> str:
    """The AML experiment a tunebus experiment's runs are grouped under."""
    return f"tunebus-{experiment_id}"


def run_id_for(who: TrialIdentity, deployment: str) -> str:
    """The AML run id of a trial attempt: fixed, so that submitting it twice cannot make two runs.

    Run ids are unique per workspace: the deployment's id keeps two deployments sharing a
    workspace (and re-using an experiment id) from ever adopting each other's runs.
    """
    return f"tunebus_{deployment}_{who.experiment_id}_{who.trial_id}_{who.attempt}"


def run_tags(job: JobRequest, deployment: str) -> dict[str, str]:
    """Tags that make a run findable in the AML studio: deployment, trial, sequence, attempt, parameters."""
    who = job.who
    parameters = json.dumps(job.parameters, separators=(",", ":"), sort_keys=True)
    return {
        DEPLOYMENT_TAG: deployment,
        "tunebus.experiment_id": who.experiment_id,
        "tunebus.trial_id": who.trial_id,
        "tunebus.sequence_id": str(who.sequence_id),
        "tunebus.attempt": str(who.attempt),
        "tunebus.parameters": parameters[:_TAG_CHARS],
    }


def run_script(trial_command: str) -> str:
    """The run script's text: to the snapshot folder, the shim on PYTHONPATH, then the trial command.

    The trial command is the script's last line, run by bash as NNI runs it; the script finds
    its folder from its own path, not from where AML started it.
    """
    return (
        "#!/usr/bin/env bash\n"
        "# Written by tunebus: runs the trial command from the snapshot's folder.\n"
        'cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 97\n'
        f'export PYTHONPATH="$PWD/{RUNTIME_FOLDER}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        f'export NNI_OUTPUT_DIR="$PWD/{OUTPUT_DIR}"\n'
        'mkdir -p "$NNI_OUTPUT_DIR"\n'
        f"{trial_command}\n"
    )


def run_command() -> str:
    """The command AML runs: the snapshot's run script, with bash."""
    return f"bash {RUN_SCRIPT}"


def aml_time_limit(max_trial_duration: float | None) -> int | None:
    """Azure ML's own ``max_run_duration_seconds``: well past tunebus's ``maxTrialDuration``.

    AML's clock starts at submission (queueing and image pull count), tunebus's when the trial
    runs: with the same number AML's could fire first and end the trial USER_CANCELED with no
    reason. Doubled and at least an hour later, tunebus's kill (SYS_CANCELED, "maxTrialDuration
    exceeded") comes first; AML's stays as the safety net for runs nobody watches any more.
    """
    if not max_trial_duration:
        return None
    limit = math.ceil(float(max_trial_duration))
    return limit + max(AML_LIMIT_MARGIN, limit)


def build_snapshot(job: JobRequest, dest: Path, secrets: Mapping[str, str] | None = None) -> Path:
    """Fill ``dest`` with the trial's snapshot: code (ignore rules applied), the nni shim, the run script.

    ``secrets`` (name → value) are the service's own: no snapshot file may hold one (the code
    was checked at ``tunebus create`` against what the CLI knew; this checks what the
    submitter knows). Blocking (it copies files): call it from a worker thread.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if job.code_dir is not None:
        try:
            archive = build_code_archive(job.code_dir, max_files=AML_SNAPSHOT_MAX_FILES - AML_RUNTIME_FILES,
                                         secrets=secrets)
            extract_code_archive(archive, dest)
        except ValueError as exc:  # CodeArchiveError: too big, too many files, a secret, unsafe
            raise PermanentSubmitError(str(exc)) from exc
        # The rules are applied; AML must not apply them again (they could drop .tunebus).
        for name in IGNORE_FILES:
            (dest / name).unlink(missing_ok=True)
        (dest / ".amlignore").write_text("# tunebus applied the ignore rules when it built this snapshot\n")
    runtime = dest / RUNTIME_FOLDER
    shutil.rmtree(runtime, ignore_errors=True)
    shutil.copytree(TRIAL_RUNTIME_DIR / "nni", runtime / "nni",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / RUN_SCRIPT).write_text(run_script(str(job.config["trialCommand"])))
    return dest


def build_script_run_config(job: JobRequest, target: AmlTarget, snapshot: Path, compute_target: Any) -> Any:
    """The real ``azureml.core.ScriptRunConfig`` of one trial attempt.

    ``compute_target`` is the workspace's ``ComputeTarget`` (its existence was checked when it
    was loaded); the run config refers to it by name.
    """
    core = import_azureml()
    from azureml.core.runconfig import DockerConfiguration

    environment = core.Environment(name=aml_experiment_name(job.who.experiment_id))
    environment.docker.base_image = target.docker_image
    environment.python.user_managed_dependencies = True  # the image's own python, nothing installed
    environment.python.interpreter_path = "python3"
    limit = aml_time_limit(job.config.get("maxTrialDuration"))
    kwargs: dict[str, Any] = {}
    if limit:
        kwargs["max_run_duration_seconds"] = limit
    config = core.ScriptRunConfig(
        source_directory=str(snapshot),
        command=run_command(),
        compute_target=getattr(compute_target, "name", None) or target.compute_target,
        environment=environment,
        docker_runtime_config=DockerConfiguration(use_docker=True),
        **kwargs,
    )
    config.run_config.environment_variables = trial_environment(
        job.who, job.parameters, metrics_url=job.metrics_url, output_dir=OUTPUT_DIR, platform="aml",
    )
    return config
