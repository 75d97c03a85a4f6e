"""``tunebus trial log`` and ``tunebus trial kill`` against the four services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.messages import TrialStatus
from tests.e2e.conftest import Stack, wait_finished, wait_until, write_experiment

pytestmark = pytest.mark.e2e

TRIAL = """import sys, time
import nni
params = nni.get_next_parameter()
seq = nni.get_sequence_id()
print(f"hello from {seq}", flush=True)
print(f"warning from {seq}", file=sys.stderr, flush=True)
if seq == 0:
    time.sleep(60)  # killed long before
nni.report_final_result(params["x"])
"""


async def test_trial_logs_and_killing_one_trial(stack: Stack, tmp_path: Path) -> None:
    config = write_experiment(tmp_path, TRIAL, trialConcurrency=2, maxTrialNumber=3, tuner={"name": "Random"})
    created = stack.cli("create", "--config", str(config), "--json")
    assert created.returncode == 0, created.stderr
    experiment_id = json.loads(created.stdout.strip().splitlines()[-1])["id"]

    state = await wait_until(stack, experiment_id, lambda s: s.trials_by_status().get("SUCCEEDED", 0) >= 1
                             and s.by_sequence()[0].status == TrialStatus.RUNNING)
    slow, quick = state.by_sequence()[0], next(t for t in state.trials.values()
                                               if t.status == TrialStatus.SUCCEEDED)
    out = stack.cli("trial", "log", experiment_id, quick.trial_id)
    assert out.returncode == 0 and out.stdout == f"hello from {quick.sequence_id}\n", out.stderr
    err = stack.cli("trial", "log", experiment_id, quick.trial_id, "--stderr")
    assert err.returncode == 0 and err.stdout == f"warning from {quick.sequence_id}\n"
    running = stack.cli("trial", "log", experiment_id, slow.trial_id)
    assert running.returncode == 0 and "uploaded when it ends" in running.stdout
    assert stack.cli("trial", "log", experiment_id, "nosuchtrial").returncode == 2
    assert stack.cli("trial", "log", experiment_id, quick.trial_id, "--attempt", "2").returncode == 2

    killed = stack.cli("trial", "kill", experiment_id, slow.trial_id)
    assert killed.returncode == 0, killed.stderr
    state = await wait_finished(stack, experiment_id)
    assert state.status == "DONE"
    assert state.trials[slow.trial_id].status == TrialStatus.USER_CANCELED
    assert state.trials[slow.trial_id].error == "killed by user"
    assert state.trials_by_status() == {"USER_CANCELED": 1, "SUCCEEDED": 2}
    # What it wrote before it was killed was kept.
    log = stack.cli("trial", "log", experiment_id, slow.trial_id)
    assert log.stdout == "hello from 0\n", log.stderr
    again = stack.cli("trial", "kill", experiment_id, slow.trial_id)
    assert again.returncode == 0 and "already ended" in again.stdout
