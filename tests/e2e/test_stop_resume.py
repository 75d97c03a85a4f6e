"""``tunebus stop``, ``resume`` and ``update`` through the CLI, against the four services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.messages import TrialStatus
from tests.e2e.conftest import Stack, wait_finished, wait_until, write_experiment

pytestmark = pytest.mark.e2e

SLOW_TRIAL = """import time
import nni
params = nni.get_next_parameter()
time.sleep(2.5)
nni.report_final_result(params["x"])
"""


async def test_a_stopped_experiment_resumes_and_runs_to_its_limit(stack: Stack, tmp_path: Path) -> None:
    config = write_experiment(tmp_path, SLOW_TRIAL, trialConcurrency=2, maxTrialNumber=5)
    created = stack.cli("create", "--config", str(config), "--json")
    assert created.returncode == 0, created.stderr
    experiment_id = json.loads(created.stdout.strip().splitlines()[-1])["id"]

    await wait_until(stack, experiment_id, lambda s: s.trials_by_status().get("SUCCEEDED", 0) >= 1
                     and len(s.running()) >= 1)
    stopped = stack.cli("stop", experiment_id)
    assert stopped.returncode == 0, stopped.stderr
    state = await wait_finished(stack, experiment_id)
    assert state.status == "STOPPED"
    cancelled = [t.trial_id for t in state.trials.values() if t.status == TrialStatus.USER_CANCELED]
    succeeded = [t.trial_id for t in state.trials.values() if t.status == TrialStatus.SUCCEEDED]
    assert cancelled and succeeded and len(state.trials) < 5

    assert stack.cli("resume", "nosuchid").returncode == 2
    resumed = stack.cli("resume", experiment_id, "--wait", "--json", timeout=120)
    assert resumed.returncode == 0, resumed.stderr + stack.logs()
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["status"] == "DONE"
    assert summary["trials"] == {"SUCCEEDED": 5 - len(cancelled), "USER_CANCELED": len(cancelled)}

    state = await wait_finished(stack, experiment_id)
    assert state.resumed_at is not None
    assert len(state.trials) == 5
    before = {*cancelled, *succeeded}
    # The new trials' ids go on after those asked for before the stop (a discarded suggestion
    # leaves a gap, as a discarded one does in any stop).
    old_max = max(t.sequence_id for t in state.trials.values() if t.trial_id in before)
    assert all(t.sequence_id > old_max for t in state.trials.values() if t.trial_id not in before)
    for trial_id in cancelled:  # what ended before the stop stays as it ended
        assert state.trials[trial_id].status == TrialStatus.USER_CANCELED
    for trial_id in succeeded:
        assert state.trials[trial_id].status == TrialStatus.SUCCEEDED

    # DONE at maxTrialNumber: more trials after an update (nnictl update trialnum) and a resume.
    bad = stack.cli("update", experiment_id, "--concurrency", "0")
    assert bad.returncode == 2 and "--concurrency" in bad.stderr
    updated = stack.cli("update", experiment_id, "--max-trial-number", "7", "--concurrency", "3")
    assert updated.returncode == 0 and "when it is resumed" in updated.stdout, updated.stderr
    more = stack.cli("resume", experiment_id, "--wait", "--json", timeout=120)
    assert more.returncode == 0, more.stderr + stack.logs()
    summary = json.loads(more.stdout.strip().splitlines()[-1])
    assert summary["status"] == "DONE"
    assert summary["trials"] == {"SUCCEEDED": 7 - len(cancelled), "USER_CANCELED": len(cancelled)}
    shown = stack.cli("experiment", "show", experiment_id)
    assert "concurrency   3" in shown.stdout and "max trials    7" in shown.stdout, shown.stdout
