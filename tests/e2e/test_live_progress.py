"""A running trial's intermediate results show in ``tunebus trial ls`` while it runs (no assessor)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from shared.messages import TrialStatus
from tests.e2e.conftest import Stack, wait_finished, wait_until, write_experiment

pytestmark = pytest.mark.e2e

TRIAL = """import time
import nni
params = nni.get_next_parameter()
for epoch in range(1, 4):
    nni.report_intermediate_result(epoch / 10)
    time.sleep(0.5 if epoch < 3 else 30)  # then it waits, running, with three results reported
nni.report_final_result(params["x"])
"""


async def test_intermediate_results_show_while_the_trial_runs(stack: Stack, tmp_path: Path) -> None:
    # The default check of a running trial's metrics is every 10 s; 0.5 s keeps the test short.
    stack.kill("metric_ingestor", sig=signal.SIGTERM)
    stack.start("metric_ingestor", TUNEBUS_PROGRESS_POLL_SECONDS="0.5")
    config = write_experiment(tmp_path, TRIAL, trialConcurrency=1, maxTrialNumber=1)
    created = stack.cli("create", "--config", str(config), "--json")
    assert created.returncode == 0, created.stderr
    experiment_id = json.loads(created.stdout.strip().splitlines()[-1])["id"]

    state = await wait_until(stack, experiment_id, lambda s: bool(s.trials) and all(
        t.metric_count == 3 for t in s.trials.values()), timeout=60)
    [trial] = state.trials.values()
    assert trial.status == TrialStatus.RUNNING and trial.last_intermediate == pytest.approx(0.3)
    listed = stack.cli("trial", "ls", experiment_id, "--json")
    [row] = json.loads(listed.stdout)
    assert (row["status"], row["last_intermediate"], row["metric_count"]) == ("RUNNING", 0.3, 3)
    table = stack.cli("trial", "ls", experiment_id)
    assert "0.3 (3)" in table.stdout, table.stdout

    assert stack.cli("stop", experiment_id).returncode == 0
    state = await wait_finished(stack, experiment_id)
    assert state.status == "STOPPED"
