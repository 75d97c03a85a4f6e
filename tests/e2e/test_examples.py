"""The runnable examples run here, through the CLI, so they never rot."""

from __future__ import annotations

import json

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
