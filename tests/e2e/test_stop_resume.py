"""``tunebus stop``, ``resume`` and ``update`` through the CLI, against the four services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.messages import TrialStatus
from tests.e2e.conftest import Stack, wait_finished, wait_until, write_experiment

pytestmark = pytest.mark.e2e

# The first trial ends at once; the others hold on a barrier the test controls until they are
# stopped (before the stop, so it lands while they run, however slow the machine) or released.
HELD_TRIAL = """import os, sys, time
import nni
params = nni.get_next_parameter()
deadline = time.monotonic() + 300
while nni.get_sequence_id() > 0 and not os.path.exists({release!r}):
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.05)
nni.report_final_result(params["x"])
"""


async def test_a_stopped_experiment_resumes_and_runs_to_its_limit(stack: Stack, tmp_path: Path,
                                                                  reachable_dir: Path) -> None:
    release = reachable_dir / "release"
    config = write_experiment(tmp_path, HELD_TRIAL.format(release=str(release)), trialConcurrency=2,
                              maxTrialNumber=5)
    created = stack.cli("create", "--config", str(config), "--json")
    assert created.returncode == 0, created.stderr
    experiment_id = json.loads(created.stdout.strip().splitlines()[-1])["id"]

    await wait_until(stack, experiment_id, lambda s: s.trials_by_status().get("SUCCEEDED", 0) >= 1
                     and len(s.running()) == 2)
    stopped = stack.cli("stop", experiment_id)
    assert stopped.returncode == 0, stopped.stderr
    state = await wait_finished(stack, experiment_id)
    assert state.status == "STOPPED"
    cancelled = [t.trial_id for t in state.trials.values() if t.status == TrialStatus.USER_CANCELED]
    succeeded = [t.trial_id for t in state.trials.values() if t.status == TrialStatus.SUCCEEDED]
    assert len(cancelled) == 2 and len(succeeded) == 1 and len(state.trials) == 3

    release.touch()  # trials run to their end from now on
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
