"""The CLI's exit codes as the README gives them: ``create --wait`` exits 1 when the experiment
ends in ERROR, and names why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, write_experiment

pytestmark = pytest.mark.e2e

BROKEN_TUNER = '''\
class Tuner:
    def __init__(self, **kwargs):
        raise RuntimeError("this tuner cannot start: no GPU license")

    def update_search_space(self, space): ...
    def generate_parameters(self, parameter_id, **kwargs): ...
    def receive_trial_result(self, parameter_id, parameters, value, **kwargs): ...
'''


def test_create_wait_exits_1_when_the_experiment_ends_in_error(stack: Stack, tmp_path: Path) -> None:
    tuner_dir = tmp_path / "tuner"
    tuner_dir.mkdir()
    (tuner_dir / "broken_tuner.py").write_text(BROKEN_TUNER)
    config = write_experiment(tmp_path, "import nni; nni.report_final_result(1.0)",
                              tuner={"className": "broken_tuner.Tuner", "codeDirectory": str(tuner_dir)})
    result = stack.cli("create", "--config", str(config), "--wait", "--json", timeout=180)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "ERROR", summary
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "no GPU license" in result.stdout + result.stderr
