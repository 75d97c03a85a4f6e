"""NNI's other built-ins end to end on the local stack: Batch, GP and the Hyperband advisor.

Trials are no-ops that report a value computed from their parameters, so each run is short and
its results can be checked exactly.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.messages import ExperimentStart, TrialStatus
from tests.e2e.conftest import Stack, publish, wait_finished

pytestmark = pytest.mark.e2e

# Reports the budget it was given as intermediate results (one per unit), then a final value.
TRIAL = (
    "import nni; p = nni.get_next_parameter(); budget = p.get('TRIAL_BUDGET', 1); "
    "v = -(p['a'] - 3) ** 2 - p.get('b', 0); "
    "[nni.report_intermediate_result(v * (i + 1) / budget) for i in range(budget)]; "
    "nni.report_final_result(v)"
)


def _config(tuner: dict[str, Any], space: dict[str, Any], max_trials: int,
            concurrency: int) -> dict[str, Any]:
    return {
        "searchSpace": space,
        "trialCommand": f'python3 -c "{TRIAL}"',
        "trialConcurrency": concurrency,
        "maxTrialNumber": max_trials,
        "maxExperimentDuration": "5m",
        "tuner": tuner,
        "trainingService": {"platform": "local"},
    }


def _value(p: dict[str, Any]) -> float:
    return float(-(p["a"] - 3) ** 2 - p.get("b", 0))


async def _run(stack: Stack, config: dict[str, Any]) -> Any:
    experiment_id = f"mt{uuid.uuid4().hex[:8]}"
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=config))
    state = await wait_finished(stack, experiment_id, timeout=120)
    assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
    for trial in state.trials.values():
        assert trial.status == TrialStatus.SUCCEEDED, state.trials_by_status()
        assert trial.final_value == pytest.approx(_value(trial.parameters))
    return state


async def test_batch_runs_each_listed_configuration_once(stack: Stack) -> None:
    configs = [{"a": 1, "b": 0}, {"a": 3, "b": 1}, {"a": 2, "b": 2}]
    space = {"combine_params": {"_type": "choice", "_value": configs}}
    state = await _run(stack, _config({"name": "BatchTuner"}, space, max_trials=10, concurrency=2))
    assert sorted(json.dumps(t.parameters, sort_keys=True) for t in state.trials.values()) == \
        sorted(json.dumps(c, sort_keys=True) for c in configs)


async def test_gp_runs_an_experiment(stack: Stack) -> None:
    space = {"a": {"_type": "uniform", "_value": [0, 6]}, "b": {"_type": "choice", "_value": [0, 1, 2]}}
    tuner = {"name": "GP", "classArgs": {"optimize_mode": "maximize", "cold_start_num": 3,
                                         "selection_num_warm_up": 2000, "selection_num_starting_points": 10}}
    state = await _run(stack, _config(tuner, space, max_trials=6, concurrency=2))
    points = [json.dumps(t.parameters, sort_keys=True) for t in state.by_sequence()]
    assert len(points) == 6 and len(set(points)) == 6


async def test_hyperband_promotes_the_best_with_a_larger_budget(stack: Stack) -> None:
    # R=3, eta=3: bracket s=1 runs 3 configurations at budget 1, then the best at budget 3 (its
    # request waits for the three results); bracket s=0 then runs 2 new ones at budget 3.
    space = {"a": {"_type": "uniform", "_value": [0, 6]}}
    advisor = {"name": "Hyperband", "classArgs": {"optimize_mode": "maximize", "R": 3, "eta": 3,
                                                  "exec_mode": "serial", "seed": 7}}
    state = await _run(stack, _config(advisor, space, max_trials=6, concurrency=3))
    trials = state.by_sequence()
    assert [t.parameters["TRIAL_BUDGET"] for t in trials] == [1, 1, 1, 3, 3, 3]
    # Each trial reported one intermediate result per unit of budget (plus its final one).
    assert len({t.metric_count - t.parameters["TRIAL_BUDGET"] for t in trials}) == 1
    best_first = max(trials[:3], key=lambda t: t.final_value or float("-inf"))
    assert trials[3].parameters == {**best_first.parameters, "TRIAL_BUDGET": 3}


async def test_bohb_runs_its_brackets(stack: Stack) -> None:
    # min 1, max 3, eta 3: bracket s=1 (3 at budget 1, the best at 3), then s=0 (2 at budget 3).
    space = {"a": {"_type": "uniform", "_value": [0, 6]}, "b": {"_type": "choice", "_value": [0, 1]}}
    advisor = {"name": "BOHB", "classArgs": {"optimize_mode": "maximize", "min_budget": 1, "max_budget": 3,
                                             "eta": 3, "seed": 2}}
    state = await _run(stack, _config(advisor, space, max_trials=6, concurrency=2))
    assert [t.parameters["TRIAL_BUDGET"] for t in state.by_sequence()] == [1, 1, 1, 3, 3, 3]
