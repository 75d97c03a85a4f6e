"""Limits acting on a running experiment, through the services: ``maxTrialDuration`` cancels a
trial that runs past it (SYS_CANCELED, as NNI), and ``tunebus update`` changes concurrency and
maxTrialNumber while trials run.

The trials hold on a barrier the test controls (a file they wait for), so what the test sees
while they run is decided by the test, not by how fast the machine is.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.messages import ExperimentStatus, TrialStatus
from shared.state import ExperimentState
from tests.e2e.conftest import Stack, wait_finished, wait_until, write_experiment

pytestmark = pytest.mark.e2e

HELD_TRIAL = """\
import os, sys, time
import nni

params = nni.get_next_parameter()
nni.report_intermediate_result(params["x"])
deadline = time.monotonic() + 300
while not os.path.exists({release!r}):  # the test's barrier
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.05)
nni.report_final_result(params["x"])
"""


@pytest.fixture
def release(reachable_dir: Path) -> Path:
    """Where the barrier file goes: a folder the trial user can read."""
    return reachable_dir / "release"


def _running(state: ExperimentState) -> int:
    return sum(t.status == TrialStatus.RUNNING for t in state.trials.values())


async def test_a_trial_past_max_trial_duration_is_sys_canceled_and_the_experiment_ends(
        stack: Stack, tmp_path: Path, release: Path) -> None:
    # Never released: each trial would wait 5 minutes; the 2 s limit ends it.
    config = write_experiment(tmp_path, HELD_TRIAL.format(release=str(release)),
                              trialConcurrency=2, maxTrialNumber=3, maxTrialDuration="2s")
    summary = stack.create(config, timeout=240)
    assert summary["status"] == ExperimentStatus.DONE, summary
    state = await wait_finished(stack, str(summary["id"]))
    assert len(state.trials) == 3
    for trial in state.trials.values():
        assert trial.status == TrialStatus.SYS_CANCELED, trial
        assert trial.error and "maxTrialDuration" in trial.error
        assert trial.final_value is None and trial.last_intermediate == trial.parameters["x"]


async def test_update_changes_a_running_experiments_limits(stack: Stack, tmp_path: Path,
                                                          release: Path) -> None:
    experiment_id = f"upd{uuid.uuid4().hex[:8]}"
    config = write_experiment(tmp_path, HELD_TRIAL.format(release=str(release)),
                              trialConcurrency=1, maxTrialNumber=5)
    created = stack.cli("create", "--config", str(config), "--id", experiment_id)
    assert created.returncode == 0, created.stderr
    await wait_until(stack, experiment_id, lambda s: _running(s) == 1)

    # More slots are filled at once.
    assert stack.cli("update", experiment_id, "--concurrency", "3").returncode == 0
    state = await wait_until(stack, experiment_id, lambda s: _running(s) == 3)
    assert len(state.trials) == 3

    # Fewer slots kill nothing; a lower maximum starts nothing beyond it.
    updated = stack.cli("update", experiment_id, "--concurrency", "1", "--max-trial-number", "3")
    assert updated.returncode == 0, updated.stderr
    state = await wait_until(stack, experiment_id,
                             lambda s: s.updated_limits.get("maxTrialNumber") == 3
                             and s.updated_limits.get("trialConcurrency") == 1)
    assert _running(state) == 3 and len(state.trials) == 3

    release.touch()
    state = await wait_finished(stack, experiment_id)
    assert state.status == ExperimentStatus.DONE, state.reason
    assert sorted(t.status for t in state.trials.values()) == [TrialStatus.SUCCEEDED] * 3
