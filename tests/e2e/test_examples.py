"""The runnable examples run here, through the CLI, so they never rot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

DIGITS = REPO_ROOT / "examples" / "sklearn-digits" / "config.yml"


def test_sklearn_digits_example_finds_an_accurate_svm(stack: Stack) -> None:
    summary = stack.create(DIGITS, timeout=280)
    assert summary["status"] == "DONE", stack.logs()
    assert summary["trials"] == {"SUCCEEDED": 20}
    best = summary["best"]
    assert isinstance(best, dict) and best["value"] >= 0.97
    assert set(best["parameters"]) == {"C", "gamma", "kernel"}

    listing = stack.cli("trial", "ls", str(summary["id"]), "--json")
    assert listing.returncode == 0, listing.stderr
    trials = json.loads(listing.stdout)
    assert len(trials) == 20
    assert sorted(t["sequence_id"] for t in trials) == list(range(20))


PBT_SGD = REPO_ROOT / "examples" / "pbt-sgd" / "config.yml"


def test_pbt_example_trains_its_population_through_checkpoints(stack: Stack) -> None:
    summary = stack.create(PBT_SGD, timeout=280)
    assert summary["status"] == "DONE", stack.logs()
    assert summary["trials"] == {"SUCCEEDED": 12}
    listing = stack.cli("trial", "ls", str(summary["id"]), "--json")
    assert listing.returncode == 0, listing.stderr
    trials = sorted(json.loads(listing.stdout), key=lambda t: t["sequence_id"])
    first, last = trials[:4], trials[-4:]
    # Three steps of training carried over by checkpoints beat one step, for the population's best.
    assert min(t["final_value"] for t in last) < min(t["final_value"] for t in first)
    assert [t["parameters"]["save_checkpoint_dir"] for t in last] == \
        [f"tunebus-checkpoints/{m}/2" for m in range(4)]


def test_mnist_pytorch_example_runs_unchanged_on_local_processes(stack: Stack, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch (installed by `make venv`) is needed by the trial")
    example = tmp_path / "mnist-pytorch"
    shutil.copytree(REPO_ROOT / "examples" / "mnist-pytorch", example)
    config = example / "config_local.yml"
    # Fewer trials than the example's 10, to keep the suite short; the trial code is untouched.
    config.write_text(config.read_text().replace("maxTrialNumber: 10", "maxTrialNumber: 2"))
    summary = stack.create(config, timeout=280)
    assert summary["status"] == "DONE", stack.logs()
    assert summary["trials"] == {"SUCCEEDED": 2}
    best = summary["best"]
    assert isinstance(best, dict) and 0.5 < best["value"] <= 1.0
