"""The tuner is no one's only copy: SIGKILLed mid-experiment and restarted, it rebuilds each
experiment's search from the state document and goes on without repeating a parameter id or a
point. And the search is reproducible: the same seed gives the same parameter sequence."""

from __future__ import annotations

import itertools
import json
import signal
import uuid
from typing import Any

import pytest

from shared.messages import ExperimentStart, TrialStatus
from shared.state import ExperimentState
from tests.e2e.conftest import Stack, publish, wait_finished, wait_until

pytestmark = pytest.mark.e2e

# The value is a function of the parameters alone, so every run learns the same thing.
TRIAL = (
    "import time, nni; p = nni.get_next_parameter(); time.sleep({sleep}); "
    "v = -(p['a'] - 3) ** 2 - (p['b'] - 1) ** 2; "
    "nni.report_intermediate_result(v / 2); nni.report_final_result(v)"
)


def _config(tuner: dict[str, Any], space: dict[str, Any], max_trials: int, concurrency: int = 2,
            sleep: float = 0.4) -> dict[str, Any]:
    return {
        "searchSpace": space,
        "trialCommand": f'python3 -c "{TRIAL.format(sleep=sleep)}"',
        "trialConcurrency": concurrency,
        "maxTrialNumber": max_trials,
        "maxExperimentDuration": "5m",
        "tuner": tuner,
        "trainingService": {"platform": "local"},
    }


def _value(params: dict[str, Any]) -> float:
    return float(-(params["a"] - 3) ** 2 - (params["b"] - 1) ** 2)


def _points(state: ExperimentState) -> list[str]:
    return [json.dumps(t.parameters, sort_keys=True) for t in state.by_sequence()]


# 6 x 5 = 30 points: TPE (a short Sobol start, then the model) runs 12 trials without exhausting it.
TPE_CASE = (
    {"name": "TPE", "classArgs": {"optimize_mode": "maximize", "seed": 4, "tpe_args": {"n_startup_jobs": 4}}},
    {"a": {"_type": "choice", "_value": [0, 1, 2, 3, 4, 5]}, "b": {"_type": "randint", "_value": [0, 5]}},
    12,
)
# 5 x 2 = 10 points and room for 20 trials: the grid must be walked exactly once, across the restart.
GRID_CASE = (
    {"name": "GridSearch"},
    {"a": {"_type": "choice", "_value": [0, 1, 2, 3, 4]}, "b": {"_type": "choice", "_value": [0, 2]}},
    20,
)


# Hyperband (serial, R=9, eta=3): 9 runs at budget 1, then the best 3 at budget 3 once all 9 have
# ended: the restart lands in the first round, and the rebuilt advisor must finish it and promote.
HYPERBAND_CASE = (
    {"name": "Hyperband", "classArgs": {"optimize_mode": "maximize", "R": 9, "eta": 3, "exec_mode": "serial",
                                        "seed": 4}},
    {"a": {"_type": "uniform", "_value": [0, 6]}, "b": {"_type": "uniform", "_value": [0, 2]}},
    13,
)


# PBT: 3 steps of a population of 4; the restart lands in the first step, and the rebuilt tuner
# must finish it, then hand the worst member the best one's checkpoint at each step.
PBT_CASE = (
    {"name": "PBT", "classArgs": {"optimize_mode": "maximize", "population_size": 4, "fraction": 0.25,
                                  "seed": 4}},
    {"a": {"_type": "uniform", "_value": [0, 6]}, "b": {"_type": "uniform", "_value": [0, 2]}},
    12,
)


@pytest.mark.parametrize(("tuner", "space", "max_trials"), [TPE_CASE, GRID_CASE, HYPERBAND_CASE, PBT_CASE],
                         ids=["TPE", "GridSearch", "Hyperband", "PBT"])
async def test_tuner_sigkilled_mid_experiment_repeats_nothing(
    stack: Stack, tuner: dict[str, Any], space: dict[str, Any], max_trials: int
) -> None:
    experiment_id = f"tr{uuid.uuid4().hex[:8]}"
    config = _config(tuner, space, max_trials)
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=config))
    before = await wait_until(stack, experiment_id,
                              lambda s: sum(t.ended for t in s.trials.values()) >= 3 and s.running(),
                              timeout=60)
    stack.kill("tuner", sig=signal.SIGKILL)
    # While it is gone, trials end and the dispatcher's suggestion requests queue up for it.
    ended_before = sum(t.ended for t in before.trials.values())
    await wait_until(stack, experiment_id,
                     lambda s: sum(t.ended for t in s.trials.values()) > ended_before, timeout=60)
    stack.start("tuner")

    state = await wait_finished(stack, experiment_id, timeout=120)
    assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
    assert "rebuilt" in stack.log("tuner-1"), stack.log("tuner-1")
    grid = [dict(zip(space, combo, strict=True))
            for combo in itertools.product(*(spec["_value"] for spec in space.values()))]
    expected = min(max_trials, len(grid)) if tuner["name"] == "GridSearch" else max_trials
    assert sorted(t.sequence_id for t in state.trials.values()) == list(range(expected))
    points = _points(state)
    assert len(set(points)) == len(points), f"a point was suggested twice: {points}"
    if tuner["name"] == "GridSearch":
        assert set(points) == {json.dumps(p, sort_keys=True) for p in grid}
    if tuner["name"] == "Hyperband":  # 9 at budget 1, the best 3 of them at 3, the best of those at 9
        trials = state.by_sequence()
        assert [t.parameters["TRIAL_BUDGET"] for t in trials] == [1] * 9 + [3] * 3 + [9]
        ranked = sorted(trials[:9], key=lambda t: -(t.final_value or 0.0))[:3]
        assert {json.dumps({**t.parameters, "TRIAL_BUDGET": 3}, sort_keys=True) for t in ranked} == \
            set(points[9:12])
    if tuner["name"] == "PBT":
        _assert_pbt_steps(state.by_sequence())
    for trial in state.trials.values():
        assert trial.status == TrialStatus.SUCCEEDED, state.trials_by_status()
        assert trial.final_value == pytest.approx(_value(trial.parameters))


def _assert_pbt_steps(trials: list[Any]) -> None:
    assert [t.parameters["save_checkpoint_dir"] for t in trials] == \
        [f"tunebus-checkpoints/{m}/{s}" for s in range(3) for m in range(4)]
    for step in (1, 2):
        before = trials[4 * (step - 1): 4 * step]
        ranked = sorted(range(4), key=lambda m: -(before[m].final_value or 0.0))
        best, worst = ranked[0], ranked[-1]
        loads = [t.parameters["load_checkpoint_dir"] for t in trials[4 * step: 4 * step + 4]]
        assert loads[worst] == f"tunebus-checkpoints/{best}/{step - 1}"
        assert all(loads[m] == f"tunebus-checkpoints/{m}/{step - 1}" for m in range(4) if m != worst)


DETERMINISM_SPACE = {
    "a": {"_type": "uniform", "_value": [0, 6]},
    "b": {"_type": "choice", "_value": [0, 1, 2]},
}


def _tpe(seed: int) -> dict[str, Any]:
    return {"name": "TPE", "classArgs": {"optimize_mode": "maximize", "seed": seed,
                                         "tpe_args": {"n_startup_jobs": 3}}}


async def test_same_seed_gives_the_same_parameter_sequence(stack: Stack) -> None:
    # Concurrency 1: each suggestion follows the previous trial's result, so TPE's model path
    # (not only its Sobol start) is compared. A different seed shows the seed is what decides.
    runs = {f"det{uuid.uuid4().hex[:8]}": seed for seed in (11, 11, 12)}
    for experiment_id, seed in runs.items():
        config = _config(_tpe(seed), DETERMINISM_SPACE, max_trials=7, concurrency=1, sleep=0.0)
        await publish(stack, ExperimentStart(experiment_id=experiment_id, config=config))
    states = [await wait_finished(stack, experiment_id, timeout=120) for experiment_id in runs]

    for state in states:
        assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
        assert [t.sequence_id for t in state.by_sequence()] == list(range(7))
        assert all(t.final_value == pytest.approx(_value(t.parameters)) for t in state.trials.values())
    first, second, other = (_points(s) for s in states)
    assert first == second
    assert first != other
