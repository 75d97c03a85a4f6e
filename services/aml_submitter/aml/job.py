"""Building one trial's Azure ML job: its snapshot folder and its ``ScriptRunConfig``.

The snapshot is what AML uploads and runs in: the experiment's code (with ``.nniignore`` /
``.amlignore`` applied, by :mod:`tunebus.code_archive`) plus the trial runtime, so that
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebus.code_archive import IGNORE_FILES, build_code_archive, extract_code_archive

from ..backend import JobRequest, PermanentSubmitError
from ..trial_env import TRIAL_RUNTIME_DIR, TrialIdentity, trial_environment

__all__ = [
    "OUTPUT_DIR",
    "RUNTIME_FOLDER",
    "AmlTarget",
    "aml_experiment_name",
    "build_script_run_config",
    "build_snapshot",
    "import_azureml",
    "run_id_for",
    "run_tags",
    "wrapped_command",
]

#: Folder of the snapshot holding the ``nni`` shim (first on the trial's PYTHONPATH).
RUNTIME_FOLDER = ".tunebus"
#: NNI_OUTPUT_DIR of an AML trial, relative to the run's working folder; AML keeps ./outputs.
OUTPUT_DIR = "outputs"
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


def run_id_for(who: TrialIdentity) -> str:
    """The AML run id of a trial attempt: fixed, so that submitting it twice cannot make two runs."""
    return f"tunebus_{who.experiment_id}_{who.trial_id}_{who.attempt}"


def run_tags(job: JobRequest) -> dict[str, str]:
    """Tags that make a run findable in the AML studio: trial, sequence, attempt, parameters."""
    who = job.who
    parameters = json.dumps(job.parameters, separators=(",", ":"), sort_keys=True)
    return {
        "tunebus.experiment_id": who.experiment_id,
        "tunebus.trial_id": who.trial_id,
        "tunebus.sequence_id": str(who.sequence_id),
        "tunebus.attempt": str(who.attempt),
        "tunebus.parameters": parameters[:_TAG_CHARS],
    }


def wrapped_command(trial_command: str) -> str:
    """The trial command, run from the snapshot folder with the shim on PYTHONPATH.

    AML runs a command given as a string through a shell, in the snapshot's folder.
    """
    return (
        f'export PYTHONPATH="$PWD/{RUNTIME_FOLDER}${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'NNI_OUTPUT_DIR="$PWD/{OUTPUT_DIR}"; mkdir -p "$NNI_OUTPUT_DIR"; {trial_command}'
    )


def build_snapshot(job: JobRequest, dest: Path) -> Path:
    """Fill ``dest`` with the trial's snapshot: code (ignore rules applied) and the nni shim.

    Blocking (it copies files): call it from a worker thread.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if job.code_dir is not None:
        try:
            extract_code_archive(build_code_archive(job.code_dir), dest)
        except ValueError as exc:  # CodeArchiveError: too big, unsafe
            raise PermanentSubmitError(str(exc)) from exc
        # The rules are applied; AML must not apply them again (they could drop .tunebus).
        for name in IGNORE_FILES:
            (dest / name).unlink(missing_ok=True)
        (dest / ".amlignore").write_text("# tunebus applied the ignore rules when it built this snapshot\n")
    runtime = dest / RUNTIME_FOLDER
    shutil.rmtree(runtime, ignore_errors=True)
    shutil.copytree(TRIAL_RUNTIME_DIR / "nni", runtime / "nni",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
    limit = job.config.get("maxTrialDuration")
    kwargs: dict[str, Any] = {}
    if limit:
        kwargs["max_run_duration_seconds"] = math.ceil(float(limit))
    config = core.ScriptRunConfig(
        source_directory=str(snapshot),
        command=wrapped_command(str(job.config["trialCommand"])),
        compute_target=getattr(compute_target, "name", None) or target.compute_target,
        environment=environment,
        docker_runtime_config=DockerConfiguration(use_docker=True),
        **kwargs,
    )
    config.run_config.environment_variables = trial_environment(
        job.who, job.parameters, metrics_url=job.metrics_url, output_dir=OUTPUT_DIR, platform="aml",
    )
    return config
