"""Assessors stop losing trials end to end, and save trial time at the same best result.

The trial reports a learning curve whose level is its parameter ``x``: value at epoch e is
``x * (1 - exp(-e / 3))`` plus a little noise seeded by ``x``, so the same parameters always give
the same curve, and the trial with the highest ``x`` dominates every other at every step (no
assessor can rightly stop it). A seeded Random tuner gives every run the same parameters.
"""

from __future__ import annotations

import json
import math
import random
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.messages import TrialStatus
from shared.state import ExperimentState, TrialRecord, best_trial
from tests.e2e.conftest import Stack, read_state

pytestmark = pytest.mark.e2e

MAX_TRIALS = 12
EPOCHS = 20
# Seed 5 draws x = .81 .77 .24 .71 .28 .69 .79 .51 .99 .67 .07 .44: two good references come
# first, the best (.99) comes in the middle, and several clear losers follow them.
SEED = 5
# A clear loser (x below LOSER_BELOW: .24 .28 .07 .44) runs its epochs after the assessors'
# start steps slowly, so the stop (five hops after the judging: ingestor, tuner, dispatcher,
# submitter) has ~10 s to land however loaded the machine is, not the 1.5 s a 0.1 s epoch
# leaves; the others take 2 s in all. Without an assessor the losers run their whole slow curve.
LOSER_BELOW = 0.5
STRETCH_AFTER = 4
LOSER_EPOCH_SECONDS = 0.6
TRIAL = f"""\
import math, random, time
import nni

x = nni.get_next_parameter()["x"]
noise = random.Random(repr(x))  # the same parameters give the same curve
value = 0.0
for epoch in range(1, {EPOCHS} + 1):
    time.sleep({LOSER_EPOCH_SECONDS} if x < {LOSER_BELOW} and epoch > {STRETCH_AFTER} else 0.1)
    value = x * (1 - math.exp(-epoch / 3)) + noise.gauss(0, 0.002)
    nni.report_intermediate_result(value)
nni.report_final_result(value)
"""

MEDIANSTOP = {"name": "Medianstop", "classArgs": {"optimize_mode": "maximize", "start_step": 5}}
CURVEFITTING = {"name": "Curvefitting", "classArgs": {"optimize_mode": "maximize", "epoch_num": EPOCHS,
                                                      "start_step": 6, "threshold": 0.95, "gap": 1}}


@pytest.fixture
def fast_stack(stack: Stack) -> Stack:
    """The stack with an ingestor polling metric blobs every 0.2 s (default 2 s), so the assessor
    sees a 2-second trial's curve while it runs."""
    stack.kill("metric_ingestor", sig=signal.SIGTERM)
    stack.start("metric_ingestor", TUNEBUS_METRIC_POLL_SECONDS="0.2")
    return stack


def _experiment(folder: Path, assessor: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.py").write_text(TRIAL)
    (folder / "search_space.json").write_text(json.dumps({"x": {"_type": "uniform", "_value": [0, 1]}}))
    config: dict[str, Any] = {
        "experimentName": "assessor-e2e",
        "searchSpaceFile": "search_space.json",
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": ".",
        "trialConcurrency": 2,
        "maxTrialNumber": MAX_TRIALS,
        "maxExperimentDuration": "5m",
        "tuner": {"name": "Random", "classArgs": {"seed": SEED}},
        "trainingService": {"platform": "local"},
    }
    if assessor is not None:
        config["assessor"] = assessor
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _run(stack: Stack, folder: Path, assessor: dict[str, Any] | None) -> ExperimentState:
    experiment_id = f"as{uuid.uuid4().hex[:8]}"
    summary = stack.create(_experiment(folder, assessor), "--id", experiment_id)
    assert summary["id"] == experiment_id
    state = await read_state(stack, experiment_id)
    assert state is not None
    return state


def _curve(x: float) -> list[float]:
    """The intermediate results TRIAL reports for ``x``, epoch by epoch (same formula, same noise)."""
    noise = random.Random(repr(x))
    return [x * (1 - math.exp(-epoch / 3)) + noise.gauss(0, 0.002) for epoch in range(1, EPOCHS + 1)]


def trial_seconds(state: ExperimentState) -> float:
    """Time trials held a slot: the sum of their run times."""
    return sum(t.duration_seconds() or 0.0 for t in state.trials.values())


def _highest_x(state: ExperimentState) -> TrialRecord:
    return max(state.trials.values(), key=lambda t: float(t.parameters["x"]))


def _check_experiment(state: ExperimentState, stack: Stack) -> list[TrialRecord]:
    """DONE with every trial ended, the best (highest-x) one SUCCEEDED; returns the stopped ones."""
    assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
    assert sorted(t.sequence_id for t in state.trials.values()) == list(range(MAX_TRIALS))
    statuses = {t.status for t in state.trials.values()}
    assert statuses <= {TrialStatus.SUCCEEDED, TrialStatus.EARLY_STOPPED}, state.trials_by_status()
    best = best_trial(state)
    assert best is not None and best.status == TrialStatus.SUCCEEDED
    assert best.trial_id == _highest_x(state).trial_id
    return [t for t in state.trials.values() if t.status == TrialStatus.EARLY_STOPPED]


@pytest.mark.parametrize("assessor", [MEDIANSTOP, CURVEFITTING], ids=["Medianstop", "Curvefitting"])
async def test_assessor_stops_losing_trials(fast_stack: Stack, tmp_path: Path,
                                            assessor: dict[str, Any]) -> None:
    state = await _run(fast_stack, tmp_path / "exp", assessor)

    stopped = _check_experiment(state, fast_stack)
    losers = [t for t in state.trials.values() if float(t.parameters["x"]) < LOSER_BELOW]
    assert losers and all(t.status == TrialStatus.EARLY_STOPPED for t in losers), (
        f"a clear loser ran to its end: {[(t.parameters, t.status) for t in losers]}\n"
        f"{fast_stack.log('tuner-0')}")
    best = best_trial(state)
    assert best is not None and best.final_value is not None
    for trial in losers:
        # Their slow epochs leave the stop ~10 s to land: killed before their final result.
        assert trial.final_value is None, trial
    for trial in stopped:
        # A stopped trial that is not a clear loser runs 0.1 s epochs: on a loaded machine the stop
        # may land after its final result, while the process still ends (as in NNI, it is still
        # EARLY_STOPPED and its final result is kept); that result is then its own last value.
        if trial.final_value is not None:
            assert trial.final_value == pytest.approx(_curve(float(trial.parameters["x"]))[-1], rel=1e-9)
        assert trial.last_intermediate is not None and trial.last_intermediate < best.final_value
        # The assessor judges a curve only from start_step results on (NNI's rule), so a stop
        # can only follow that many; and the last result recorded is the trial's own value at
        # that epoch (not a neighbour's, not the count off by one). The kill may land late on a
        # loaded machine (after the last epoch's result, before the final one): still a stop.
        assert trial.metric_count >= assessor["classArgs"]["start_step"], trial
        expected = _curve(float(trial.parameters["x"]))[trial.metric_count - 1]
        assert trial.last_intermediate == pytest.approx(expected, rel=1e-9), trial
        assert trial.error and "assessor" in trial.error  # the stop request's reason is kept


async def test_medianstop_spends_fewer_trial_seconds_for_the_same_best(fast_stack: Stack,
                                                                      tmp_path: Path) -> None:
    without = await _run(fast_stack, tmp_path / "without", None)
    with_medianstop = await _run(fast_stack, tmp_path / "with", MEDIANSTOP)

    assert not _check_experiment(without, fast_stack)
    assert _check_experiment(with_medianstop, fast_stack)
    # Same seed: every parameter id got the same parameters in both runs.
    assert ({t.sequence_id: t.parameters for t in without.trials.values()}
            == {t.sequence_id: t.parameters for t in with_medianstop.trials.values()})
    best_without, best_with = best_trial(without), best_trial(with_medianstop)
    assert best_without is not None and best_with is not None
    assert best_with.parameters == best_without.parameters
    assert best_with.final_value == best_without.final_value
    spent_without, spent_with = trial_seconds(without), trial_seconds(with_medianstop)
    assert spent_with < spent_without, (spent_with, spent_without)
