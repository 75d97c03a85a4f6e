"""The ``tunebus`` command without infrastructure: validation, dry runs, failures, formatting.

Broker and storage URLs point at closed local ports, so any attempt to connect fails fast and
loudly; a test that expects exit 2 from validation thereby also shows nothing was contacted.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.messages import ExperimentStatus, TrialStatus
from shared.state import ExperimentState, TrialRecord
from tunebus import cli
from tunebus.cli import create

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "sklearn-digits" / "config.yml"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def unreachable(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings pointing at ports nothing listens on (the password must never be printed)."""
    env = {
        "TUNEBUS_AMQP_URL": f"amqp://guest:s3cret@127.0.0.1:{closed_port()}/",
        "TUNEBUS_STORAGE_CONNECTION_STRING": (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
            f"BlobEndpoint=http://127.0.0.1:{closed_port()}/devstoreaccount1;"
        ),
        "TUNEBUS_STORAGE_CONTAINER": "tunebus",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def write_config(folder: Path, body: str, search_space: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.py").write_text("import nni\n")
    (folder / "search_space.json").write_text(json.dumps(
        search_space if search_space is not None else {"lr": {"_type": "loguniform", "_value": [1e-4, 0.1]}}
    ))
    path = folder / "config.yml"
    path.write_text(textwrap.dedent(body))
    return path


VALID = """\
    searchSpaceFile: search_space.json
    trialCommand: python3 trial.py
    trialCodeDirectory: .
    trialConcurrency: 2
    maxTrialNumber: 4
    tuner:
      name: TPE
      classArgs: {optimize_mode: maximize}
    trainingService:
      platform: local
"""


# ---------------------------------------------------------------- create: validation and dry run


def test_dry_run_prints_the_normalized_config(capsys: pytest.CaptureFixture[str],
                                              unreachable: dict[str, str]) -> None:
    assert cli.main(["create", "--config", str(EXAMPLE_CONFIG), "--dry-run"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trialCommand"] == "python3 trial.py"
    assert doc["trialConcurrency"] == 2 and doc["maxTrialNumber"] == 20
    assert doc["maxExperimentDuration"] == 600
    assert doc["tuner"]["name"] == "TPE"
    assert doc["trainingService"]["platform"] == "local"
    assert set(doc["searchSpace"]) == {"C", "gamma", "kernel"}
    assert Path(doc["trialCodeDirectory"]) == EXAMPLE_CONFIG.parent


def test_dry_run_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, VALID + """\
    sharedStorage:
      storageType: AzureBlob
      localMountPoint: /tmp/mnt
      remoteMountPoint: /mnt/shared
      storageAccountName: acct
      storageAccountKey: do-not-print-me
      containerName: shared
      localMounted: nomount
    """)
    assert cli.main(["create", "-c", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "do-not-print-me" not in out
    assert json.loads(out)["sharedStorage"]["storageAccountKey"] == "***"


@pytest.mark.parametrize(
    ("body", "search_space", "field"),
    [
        (VALID.replace("    trialCommand: python3 trial.py\n", ""), None, "trialCommand"),
        (VALID.replace("trialConcurrency: 2", "trialConcurrency: 0"), None, "trialConcurrency"),
        (VALID.replace("maxTrialNumber: 4", "maxTrialNumbr: 4"), None, "maxTrialNumbr"),
        (VALID.replace("platform: local", "platform: kubeflow"), None, "trainingService.platform"),
        (VALID, {"lr": {"_type": "logunifrom", "_value": [1, 2]}}, "searchSpaceFile.lr"),
        (VALID.replace("search_space.json", "missing.json"), None, "searchSpaceFile"),
        # A built-in algorithm's classArgs and search-space types are checked at create too.
        (VALID.replace("optimize_mode: maximize", "optimize_mode: max"), None, "tuner"),
        (VALID.replace("name: TPE", "name: GP").replace("optimize_mode: maximize", "utility: pi"), None,
         "tuner"),
        (VALID.replace("name: TPE", "name: GP"), {"k": {"_type": "choice", "_value": ["a", "b"]}},
         "tuner"),
        (VALID.replace("name: TPE\n      classArgs: {optimize_mode: maximize}", "name: Batch"), None,
         "tuner"),
        (VALID + "    assessor: {name: Medianstop, classArgs: {start_step: -1}}\n", None, "assessor"),
        (VALID.replace("name: TPE", "name: Hyperband") + "    assessor: {name: Medianstop}\n", None,
         "assessor"),
        (VALID.replace("tuner:", "advisor:").replace("name: TPE", "name: Hyperband")
         .replace("optimize_mode: maximize", "optimize_mode: maximize, eta: 1"), None, "tuner"),
        (VALID.replace("name: TPE", "name: PBT")
         .replace("optimize_mode: maximize", "optimize_mode: maximize, fraction: 2"), None, "tuner"),
        (VALID.replace("name: TPE", "name: PBTTuner") + "    assessor: {name: Medianstop}\n", None,
         "assessor"),
        # On Azure ML, PBT's checkpoints need a folder every job mounts.
        (VALID.replace("name: TPE", "name: PBT").replace(
            "platform: local", "platform: aml\n      subscriptionId: s\n      resourceGroup: r\n"
                               "      workspaceName: w\n      computeTarget: c"), None,
         "tuner.classArgs.all_checkpoint_dir"),
    ],
)
def test_invalid_config_exits_2_naming_the_field_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unreachable: dict[str, str],
    body: str, search_space: dict[str, Any] | None, field: str,
) -> None:
    config = write_config(tmp_path, body, search_space)
    assert cli.main(["create", "--config", str(config)]) == 2  # a connection attempt would exit 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"error: {config}: ") for line in lines), err
    assert any(line.removeprefix(f"error: {config}: ").startswith(f"{field}: ") for line in lines), err
    assert "cannot reach" not in err, "validation must fail before any connection is attempted"


def test_invalid_config_through_the_console_script(tmp_path: Path, unreachable: dict[str, str]) -> None:
    config = write_config(tmp_path, VALID.replace("trialConcurrency: 2", "trialConcurrency: -1"))
    result = subprocess.run([sys.executable, "-m", "tunebus", "create", "--config", str(config), "--wait"],
                            capture_output=True, text=True, timeout=60, env=_env(unreachable))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {config}: trialConcurrency: ")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_invalid_experiment_id_exits_2(capsys: pytest.CaptureFixture[str],
                                       unreachable: dict[str, str]) -> None:
    assert cli.main(["create", "-c", str(EXAMPLE_CONFIG), "--id", "../escape"]) == 2
    assert "invalid experiment id" in capsys.readouterr().err
    assert cli.main(["experiment", "show", "a/b"]) == 2


def test_unreachable_infrastructure_is_one_line_each_naming_the_url(
    capsys: pytest.CaptureFixture[str], unreachable: dict[str, str]
) -> None:
    assert cli.main(["create", "-c", str(EXAMPLE_CONFIG), "--wait"]) == 1
    err = capsys.readouterr().err
    amqp_shown = unreachable["TUNEBUS_AMQP_URL"].replace("s3cret", "***")
    blob = unreachable["TUNEBUS_STORAGE_CONNECTION_STRING"].split("BlobEndpoint=")[1].rstrip(";")
    assert f"error: cannot reach the broker at {amqp_shown}: " in err
    assert f"error: cannot reach blob storage at {blob}: " in err
    assert "s3cret" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2


@pytest.mark.parametrize("argv", [["experiment", "list"], ["experiment", "show", "abc"],
                                  ["trial", "ls", "abc"], ["stop", "abc"]])
def test_reading_commands_fail_in_one_line_without_storage(
    argv: list[str], capsys: pytest.CaptureFixture[str], unreachable: dict[str, str]
) -> None:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach blob storage at http://127.0.0.1:") and "\n" not in err


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **extra}


def test_help_imports_no_heavy_dependencies() -> None:
    code = textwrap.dedent("""
        import sys
        from tunebus import cli
        try:
            cli.main(["--help"])
        except SystemExit:
            pass
        print(sorted(m for m in ("aio_pika", "azure", "pydantic", "yaml", "asyncio") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_create_never_imports_the_azure_sdk(unreachable: dict[str, str]) -> None:
    # Storage is reached through shared.blob_rest (stdlib only): the SDK's import is slow
    # (benchmarks/README_startup.md).
    # The full path (upload, publish) is checked against Azurite in tests/integration/test_blob_rest.py.
    code = textwrap.dedent(f"""
        import sys
        from tunebus import cli
        code = cli.main(["create", "-c", {str(EXAMPLE_CONFIG)!r}, "--wait"])
        roots = {{name.split(".")[0] for name in sys.modules}}
        print(code, sorted(roots & {{"azure", "aiohttp"}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=_env(unreachable))
    assert result.stdout.strip().splitlines()[-1] == "1 []", result.stderr


# ---------------------------------------------------------------- summaries (pure)


T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def trial(n: int, status: TrialStatus, value: float | None = None, **extra: Any) -> TrialRecord:
    return TrialRecord(trial_id=f"tr{n:03d}", sequence_id=n, parameters={"C": n, "kernel": "rbf"},
                       status=status, final_value=value, started_at=T0,
                       ended_at=T0 + timedelta(seconds=n + 1) if value is not None else None, **extra)


def state_with(*trials: TrialRecord, status: ExperimentStatus = ExperimentStatus.RUNNING,
               mode: str = "maximize") -> ExperimentState:
    return ExperimentState(experiment_id="abcd1234", status=status, optimize_mode=mode, started_at=T0,
                           trials={t.trial_id: t for t in trials})


def test_summary_is_one_json_object_with_counts_and_best() -> None:
    state = state_with(
        trial(0, TrialStatus.SUCCEEDED, 0.91), trial(1, TrialStatus.SUCCEEDED, 0.97),
        trial(2, TrialStatus.FAILED, error="boom"), trial(3, TrialStatus.RUNNING),
        trial(4, TrialStatus.EARLY_STOPPED, 0.5), status=ExperimentStatus.DONE,
    )
    summary = cli.experiment_summary(state)
    assert summary == {
        "id": "abcd1234",
        "status": "DONE",
        "reason": None,
        "trials": {"RUNNING": 1, "SUCCEEDED": 2, "FAILED": 1, "EARLY_STOPPED": 1},
        "best": {"trial_id": "tr001", "value": 0.97, "parameters": {"C": 1, "kernel": "rbf"}},
    }
    assert list(summary["trials"]) == ["RUNNING", "SUCCEEDED", "FAILED", "EARLY_STOPPED"]
    line = json.dumps(summary)
    assert "\n" not in line and json.loads(line) == summary


def test_summary_best_follows_optimize_mode_and_may_be_null() -> None:
    minimize = state_with(trial(0, TrialStatus.SUCCEEDED, 0.3), trial(1, TrialStatus.SUCCEEDED, 0.1),
                          mode="minimize")
    assert cli.experiment_summary(minimize)["best"]["trial_id"] == "tr001"
    empty = state_with()
    assert cli.experiment_summary(empty) == {"id": "abcd1234", "status": "RUNNING", "reason": None,
                                             "trials": {}, "best": None}
    assert cli.pending_summary("abcd1234") == {"id": "abcd1234", "status": "INITIALIZED", "reason": None,
                                               "trials": {}, "best": None}


def test_progress_line_and_summary_text() -> None:
    state = state_with(trial(0, TrialStatus.SUCCEEDED, 0.97123), trial(1, TrialStatus.RUNNING))
    assert cli.progress_line(state, 12.34) == (
        "RUNNING  trials: 1 RUNNING, 1 SUCCEEDED  best: 0.97123 (tr000)  [12.3s]"
    )
    assert cli.progress_line(None, None).startswith("INITIALIZED  waiting for the dispatcher")
    done = state_with(trial(0, TrialStatus.SUCCEEDED, 0.97), trial(1, TrialStatus.FAILED),
                      status=ExperimentStatus.ERROR)
    done.reason = "tuner: bad classArgs"
    text = cli.summary_text(done, 125.0)
    assert text.splitlines() == [
        "experiment abcd1234 ERROR after 2m05s",
        "reason: tuner: bad classArgs",
        "trials: 2 (1 SUCCEEDED, 1 FAILED)",
        'best: trial tr000 (#0) 0.97 {"C": 0, "kernel": "rbf"}',
        "details: tunebus trial ls abcd1234",
    ]


def test_trial_row_for_json_listing() -> None:
    failed = trial(2, TrialStatus.FAILED, error="exit code 1", job_url="https://ml.azure.com/runs/x")
    failed.ended_at = T0 + timedelta(seconds=42.5)  # its run time, from started_at to ended_at
    row = cli.trial_row(failed)
    assert row == {"trial_id": "tr002", "sequence_id": 2, "status": "FAILED", "final_value": None,
                   "last_intermediate": None, "metric_count": 0,
                   "duration_seconds": 42.5, "parameters": {"C": 2, "kernel": "rbf"},
                   "error": "exit code 1", "job_url": "https://ml.azure.com/runs/x"}
    assert json.loads(json.dumps(row)) == row


def test_helpers() -> None:
    ids = {cli.new_experiment_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 8 and i.isalnum() and i == i.lower() for i in ids)
    assert cli.format_seconds(5.04) == "5.0s" and cli.format_seconds(3725) == "1h02m"
    assert cli.blob_endpoint("UseDevelopmentStorage=true") == "http://127.0.0.1:10000/devstoreaccount1"
    assert cli.blob_endpoint("DefaultEndpointsProtocol=https;AccountName=acc;AccountKey=k;"
                             "EndpointSuffix=core.windows.net") == "https://acc.blob.core.windows.net"


def test_show_of_a_resumed_experiment_counts_only_the_time_it_ran() -> None:
    from datetime import UTC, datetime, timedelta

    from shared.state import ExperimentState
    from tunebus.cli.reading import _show_lines

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    state = ExperimentState(experiment_id="e1", status="DONE", started_at=t0,
                            resumed_at=t0 + timedelta(hours=2), ran_before_resume=30.0,
                            ended_at=t0 + timedelta(hours=2, seconds=15))
    lines = dict(line.split(None, 1) for line in _show_lines("e1", state, {}))
    assert lines["resumed"] == "2026-01-01 02:00:00 UTC"
    assert lines["elapsed"] == "45.0s"  # 30 s before the stop, 15 s after the resume


def test_show_gives_the_limits_as_updated() -> None:
    import re
    from datetime import UTC, datetime

    from shared.state import ExperimentState
    from tunebus.cli.reading import _show_lines

    state = ExperimentState(experiment_id="e1", started_at=datetime(2026, 1, 1, tzinfo=UTC),
                            updated_limits={"trialConcurrency": 8, "maxExperimentDuration": 7200.0})
    config = {"trialConcurrency": 2, "maxTrialNumber": 40, "maxExperimentDuration": 600}
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in _show_lines("e1", state, config))
    assert lines["concurrency"] == "8"
    assert lines["max trials"] == "40"  # not updated: the config's
    assert lines["max duration"] == "2h00m"


# ---------------------------------------------------------------- create: no secret uploaded

#: A sharedStorage section with an account key: what create must never upload.
SHARED_STORAGE_WITH_KEY = """\
    sharedStorage:
      storageType: AzureBlob
      storageAccountName: acct
      containerName: c
      storageAccountKey: c2VjcmV0LWtleS1vZi10aGUtc2hhcmVkLXN0b3JhZ2U=
      localMountPoint: /mnt/data
      remoteMountPoint: /tmp/data
      localMounted: usermount
"""

AML_WITH_KEY = """\
    searchSpaceFile: search_space.json
    trialCommand: python3 trial.py
    trialCodeDirectory: .
    trialConcurrency: 1
    tuner:
      name: TPE
    trainingService:
      platform: aml
      subscriptionId: s
      resourceGroup: r
      workspaceName: w
      computeTarget: cpu-cluster
""" + SHARED_STORAGE_WITH_KEY


def test_create_never_packs_its_config_file(tmp_path: Path, unreachable: dict[str, str]) -> None:
    """The config (with the key) sits in the code folder: it is left out, so create goes on to connect."""
    config = write_config(tmp_path, AML_WITH_KEY)
    from shared.config import load_experiment_config
    from shared.settings import CommonSettings

    loaded = load_experiment_config(config)
    archive = create._build_archive(loaded, config, create._known_secrets(loaded, CommonSettings()))
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert "config.yml" not in tar.getnames() and "trial.py" in tar.getnames()


@pytest.mark.parametrize("where", ["copy", "env"])
def test_create_refuses_code_holding_a_secret_exit_2_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], unreachable: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    config = write_config(tmp_path, AML_WITH_KEY)
    if where == "copy":  # a second copy of the config, under another name
        (tmp_path / "config_backup.yml").write_text(config.read_text())
        secret_name = "sharedStorage.storageAccountKey"
    else:
        monkeypatch.setenv("AZURE_CLIENT_SECRET", "sp-secret-value-123")
        (tmp_path / "run.sh").write_text("export AZURE_CLIENT_SECRET=sp-secret-value-123\n")
        secret_name = "AZURE_CLIENT_SECRET"
    assert cli.main(["create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert secret_name in err and ("config_backup.yml" in err or "run.sh" in err)
    assert "c2VjcmV0" not in err and "sp-secret-value-123" not in err
    assert "cannot reach" not in err  # refused before connecting to anything


def test_create_checks_amls_snapshot_file_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                unreachable: dict[str, str]) -> None:
    config = write_config(tmp_path, AML_WITH_KEY)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(2000):
        (many / f"f{i}.txt").write_text("")
    assert cli.main(["create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "files, over the limit of" in err and "Azure ML's snapshot limit" in err


# ---------------------------------------------------------------- create: custom algorithm code

CUSTOM_TUNER_CONFIG = """\
    searchSpaceFile: search_space.json
    trialCommand: python3 trial.py
    trialCodeDirectory: .
    trialConcurrency: 1
    tuner:
      className: my_tuner.MyTuner
      codeDirectory: .
      classArgs: {optimize_mode: maximize}
    trainingService:
      platform: local
""" + SHARED_STORAGE_WITH_KEY


def test_create_packs_a_custom_tuners_code_like_trial_code(tmp_path: Path) -> None:
    """The codeDirectory travels as an archive: ignore files apply, the config file stays out."""
    import io
    import tarfile

    from shared.config import load_experiment_config
    from shared.settings import CommonSettings

    config = write_config(tmp_path, CUSTOM_TUNER_CONFIG)
    (tmp_path / "my_tuner.py").write_text("class MyTuner: ...\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"0" * 1000)
    (tmp_path / ".nniignore").write_text("data/\n")
    loaded = load_experiment_config(config)
    secrets = create._known_secrets(loaded, CommonSettings())
    archives = create._build_algorithm_archives(loaded, config, secrets)
    assert list(archives) == ["tuner"]
    with tarfile.open(fileobj=io.BytesIO(archives["tuner"]), mode="r:gz") as tar:
        names = tar.getnames()
    assert "my_tuner.py" in names and "config.yml" not in names and not any("big.bin" in n for n in names)


def test_create_refuses_a_custom_tuner_folder_holding_a_secret_before_connecting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], unreachable: dict[str, str]) -> None:
    trial_dir = tmp_path / "trial"
    config = write_config(trial_dir, CUSTOM_TUNER_CONFIG.replace("codeDirectory: .",
                                                                 "codeDirectory: ../tuner"))
    (tmp_path / "tuner").mkdir()
    (tmp_path / "tuner" / "my_tuner.py").write_text(
        "KEY = 'c2VjcmV0LWtleS1vZi10aGUtc2hhcmVkLXN0b3JhZ2U='\nclass MyTuner: ...\n")
    assert cli.main(["create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "my_tuner.py contains the value of sharedStorage.storageAccountKey" in err
    assert "cannot reach" not in err  # refused before connecting to anything


def test_create_bounds_a_custom_tuners_code(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            unreachable: dict[str, str]) -> None:
    from shared.code_archive import MAX_ALGORITHM_CODE_BYTES

    config = write_config(tmp_path / "trial", CUSTOM_TUNER_CONFIG.replace("codeDirectory: .",
                                                                          "codeDirectory: ../tuner"))
    (tmp_path / "tuner").mkdir()
    (tmp_path / "tuner" / "weights.bin").write_bytes(b"\0" * (MAX_ALGORITHM_CODE_BYTES + 1))
    assert cli.main(["create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "tuner.codeDirectory" in err and "over the 20.0 MB limit" in err and "cannot reach" not in err
