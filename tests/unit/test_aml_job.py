"""The AML job a trial becomes: the snapshot, and the real azureml-core ScriptRunConfig."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.aml_submitter.aml.job import (
    RUN_SCRIPT,
    RUNTIME_FOLDER,
    AmlTarget,
    aml_experiment_name,
    aml_time_limit,
    build_script_run_config,
    build_snapshot,
    run_command,
    run_id_for,
    run_tags,
)
from services.aml_submitter.backend import JobRequest, PermanentSubmitError
from services.aml_submitter.trial_env import TrialIdentity

pytest.importorskip("azureml.core", reason="azureml-core (the aml extra) is not installed")

ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5"
METRICS_URL = "https://acct.blob.core.windows.net/tunebus?sv=2021-08-06&sp=cw&sig=abc"


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "trialCommand": "python3 trial.py --epochs 2",
        "trialConcurrency": 2,
        "maxTrialDuration": 599.5,
        "trainingService": {
            "platform": "aml", "subscriptionId": "sub-1", "resourceGroup": "rg-1", "workspaceName": "ws-1",
            "computeTarget": "gpu-cluster", "dockerImage": "myregistry.azurecr.io/trials:3",
        },
        "sharedStorage": {"storageType": "AzureBlob", "storageAccountName": "data", "containerName": "c",
                          "storageAccountKey": ACCOUNT_KEY, "localMountPoint": "/mnt",
                          "remoteMountPoint": "/r", "localMounted": "usermount"},
    }
    config.update(overrides)
    return config


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    (code / "data").mkdir()
    (code / "trial.py").write_text("print('trial')\n")
    (code / "sub" / "keep.py").write_text("x = 1\n")
    (code / "data" / "big.bin").write_bytes(b"0" * 1000)
    (code / "secret.txt").write_text("not for AML\n")
    (code / "notes.log").write_text("log\n")
    (code / ".nniignore").write_text("data/\n*.log\n")
    (code / ".amlignore").write_text("secret.txt\n")
    return code


def _job(code_dir: Path | None, **config: Any) -> JobRequest:
    who = TrialIdentity("exp42", "trialab", 7, attempt=2)
    return JobRequest(who, {"lr": 0.01, "layers": [64, 32]}, _config(**config), code_dir, METRICS_URL)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_snapshot_has_the_code_minus_ignored_files_and_the_nni_shim(code_dir: Path, tmp_path: Path) -> None:
    snapshot = build_snapshot(_job(code_dir), tmp_path / "snap")
    files = _files(snapshot)
    assert {"trial.py", "sub/keep.py", f"{RUNTIME_FOLDER}/nni/__init__.py"} <= files
    assert not {f for f in files if f.startswith("data/") or f.endswith(".log")}, files  # .nniignore
    assert "secret.txt" not in files  # .amlignore
    # The rules were applied; AML must not apply them again (nor a .gitignore instead).
    assert ".nniignore" not in files
    assert (snapshot / ".amlignore").read_text().startswith("#")
    assert not any("__pycache__" in f for f in files)


def test_snapshot_without_code_still_has_the_shim(tmp_path: Path) -> None:
    snapshot = build_snapshot(_job(None), tmp_path / "snap")
    assert f"{RUNTIME_FOLDER}/nni/__init__.py" in _files(snapshot)


def test_the_shim_is_importable_from_any_folder_the_command_goes_to(code_dir: Path, tmp_path: Path) -> None:
    snapshot = build_snapshot(_job(code_dir), tmp_path / "snap")
    env = {"PATH": os.environ["PATH"], "TUNEBUS_PARAMETERS": json.dumps({"lr": 0.5})}
    job = _job(code_dir)
    command = (f"cd sub && {sys.executable} -c 'import nni, os; print(nni.get_next_parameter()[\"lr\"], "
               "os.environ[\"NNI_OUTPUT_DIR\"])'")
    job.config["trialCommand"] = command
    snapshot = build_snapshot(job, tmp_path / "snap2")
    # Started from another folder and through `sh -c`: the run script goes to its own folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(["sh", "-c", f"bash {snapshot / RUN_SCRIPT}"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "0.5"
    assert out[1] == str(snapshot / "outputs") and (snapshot / "outputs").is_dir()
    assert run_command() == f"bash {RUN_SCRIPT}"
    assert (snapshot / RUN_SCRIPT).read_text().rstrip().endswith(command)


def test_script_run_config_carries_image_target_command_env_and_limit(code_dir: Path, tmp_path: Path) -> None:
    from azureml.core import ScriptRunConfig

    job = _job(code_dir)
    target = AmlTarget.from_config(job.config)
    snapshot = build_snapshot(job, tmp_path / "snap")
    config = build_script_run_config(job, target, snapshot, SimpleNamespace(name="gpu-cluster"))

    assert isinstance(config, ScriptRunConfig)
    assert config.source_directory == str(snapshot)
    run_config = config.run_config
    assert run_config.target == "gpu-cluster"
    assert run_config.environment.docker.base_image == "myregistry.azurecr.io/trials:3"
    assert run_config.environment.python.user_managed_dependencies is True
    assert run_config.environment.python.interpreter_path == "python3"
    assert run_config.docker.use_docker is True
    # 599.5 s rounded up, then an hour more: tunebus's own limit (SYS_CANCELED, with a reason) comes first
    assert run_config.max_run_duration_seconds == 600 + 3600
    assert config.command == f"bash {RUN_SCRIPT}"
    assert (snapshot / RUN_SCRIPT).read_text().rstrip().endswith("python3 trial.py --epochs 2")
    env = run_config.environment_variables
    assert env["NNI_PLATFORM"] == "aml"
    assert env["NNI_EXP_ID"] == "exp42" and env["NNI_TRIAL_JOB_ID"] == "trialab"
    assert env["NNI_TRIAL_SEQ_ID"] == "7" and env["TUNEBUS_TRIAL_ATTEMPT"] == "2"
    assert json.loads(env["TUNEBUS_PARAMETERS"]) == {"lr": 0.01, "layers": [64, 32]}
    assert env["TUNEBUS_METRICS_URL"] == METRICS_URL
    assert "TUNEBUS_METRICS_PREFIX" not in env, "the results URL names the one blob the trial may append to"


def test_no_limit_means_azure_mls_default(code_dir: Path, tmp_path: Path) -> None:
    from azureml.core import ScriptRunConfig

    config = _config()
    del config["maxTrialDuration"]
    job = JobRequest(_job(code_dir).who, {}, config, code_dir, METRICS_URL)
    built = build_script_run_config(job, AmlTarget.from_config(config), build_snapshot(job, tmp_path / "s"),
                                    SimpleNamespace(name="gpu-cluster"))
    assert built.run_config.max_run_duration_seconds == ScriptRunConfig.MAX_DURATION_SECONDS_DEFAULT


def test_no_account_key_in_the_job_definition_or_tags(code_dir: Path, tmp_path: Path) -> None:
    job = _job(code_dir)
    snapshot = build_snapshot(job, tmp_path / "snap")
    config = build_script_run_config(job, AmlTarget.from_config(job.config), snapshot,
                                     SimpleNamespace(name="gpu-cluster"))
    from azureml.core._serialization_utils import _serialize_to_dict

    # What azureml-core sends to the service as the run's definition.
    definition = json.dumps(_serialize_to_dict(config.run_config), default=str)
    assert "gpu-cluster" in definition and "NNI_TRIAL_JOB_ID" in definition  # the save did save it
    everything = definition + config.command + json.dumps(run_tags(job, "dep1")) + json.dumps(dict(
        config.run_config.environment_variables))
    assert ACCOUNT_KEY not in everything
    assert not any(ACCOUNT_KEY.encode() in p.read_bytes() for p in snapshot.rglob("*") if p.is_file())


def test_tags_names_and_run_id() -> None:
    job = _job(None)
    assert run_tags(job, "dep1") == {
        "tunebus.deployment": "dep1", "tunebus.experiment_id": "exp42", "tunebus.trial_id": "trialab",
        "tunebus.sequence_id": "7",
        "tunebus.attempt": "2", "tunebus.parameters": '{"layers":[64,32],"lr":0.01}',
    }
    assert aml_experiment_name("exp42") == "tunebus-exp42"
    assert run_id_for(job.who, "dep1") == "tunebus_dep1_exp42_trialab_2"  # fixed: a resubmission finds it


def test_amls_limit_is_well_past_tunebuss() -> None:
    assert aml_time_limit(None) is None and aml_time_limit(0) is None
    assert aml_time_limit(60) == 60 + 3600  # at least an hour later
    assert aml_time_limit(10 * 3600) == 20 * 3600  # and at least twice as long


def test_target_from_config_and_missing_fields() -> None:
    target = AmlTarget.from_config(_config())
    assert target.workspace_key == ("sub-1", "rg-1", "ws-1")
    assert target.compute_target == "gpu-cluster"
    with pytest.raises(PermanentSubmitError, match="computeTarget"):
        AmlTarget.from_config({"trainingService": {"platform": "aml", "subscriptionId": "s",
                                                   "resourceGroup": "r", "workspaceName": "w"}})


def test_code_over_the_size_limit_fails_the_trial(code_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.code_archive as archive

    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 10)
    monkeypatch.setattr(archive.build_code_archive, "__defaults__", None)
    defaults = dict(archive.build_code_archive.__kwdefaults__ or {})
    monkeypatch.setattr(archive.build_code_archive, "__kwdefaults__", {**defaults, "max_bytes": 10})
    with pytest.raises(PermanentSubmitError, match="over the"):
        build_snapshot(_job(code_dir), tmp_path / "snap")


def test_a_secret_of_the_service_in_the_code_fails_the_trial(code_dir: Path, tmp_path: Path) -> None:
    (code_dir / "notes.txt").write_text("client secret: ZmFrZS1jbGllbnQtc2VjcmV0\n")
    with pytest.raises(PermanentSubmitError, match=r"notes.txt contains the value of AZURE_CLIENT_SECRET"):
        build_snapshot(_job(code_dir), tmp_path / "snap", {"AZURE_CLIENT_SECRET": "ZmFrZS1jbGllbnQtc2VjcmV0"})
