"""NNI's other built-ins end to end on the local stack: Batch, GP, Metis, DNGO, PBT, Hyperband and BOHB.

Trials are no-ops that report a value computed from their parameters, so each run is short and
its results can be checked exactly.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.messages import ExperimentStart, TrialStatus
from shared.storage import BlobStore, Layout
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


@pytest.mark.parametrize(
    "tuner",
    [
        {"name": "Metis", "classArgs": {"optimize_mode": "maximize", "cold_start_num": 3,
                                        "selection_num_starting_points": 50}},
        {"name": "DNGOTuner", "classArgs": {"optimize_mode": "maximize", "trials_per_update": 3,
                                            "num_epochs_per_training": 50, "sample_size": 200}},
    ],
    ids=["Metis", "DNGO"],
)
async def test_model_tuners_run_an_experiment(stack: Stack, tuner: dict[str, Any]) -> None:
    # Three random trials, then three chosen by the model (rebuilt by any tuner process from storage).
    space = {"a": {"_type": "uniform", "_value": [0, 6]}, "b": {"_type": "choice", "_value": [0, 1, 2]}}
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


# Loads the step count from its checkpoint (none at the first step), saves it plus one in a
# subfolder of its save folder, and reports 10 * (steps so far) + a: the tens say how many
# checkpoints were handed on before it.
PBT_TRIAL = (
    "import json, os, nni; p = nni.get_next_parameter(); "
    "f = os.path.join(p['load_checkpoint_dir'], 'sub', 'state.json'); "
    "n = json.loads(open(f).read())['steps'] if os.path.exists(f) else 0; "
    "os.makedirs(os.path.join(p['save_checkpoint_dir'], 'sub')); "
    "open(os.path.join(p['save_checkpoint_dir'], 'sub', 'state.json'), 'w')"
    ".write(json.dumps({'steps': n + 1})); "
    "nni.report_final_result(10 * (n + 1) + p['a'])"
)


async def test_pbt_hands_checkpoints_from_step_to_step_through_storage(stack: Stack) -> None:
    space = {"a": {"_type": "uniform", "_value": [0, 1]}}
    tuner = {"name": "PBT", "classArgs": {"optimize_mode": "maximize", "population_size": 2,
                                          "fraction": 0.5, "seed": 3}}
    config = {**_config(tuner, space, max_trials=6, concurrency=2),
              "trialCommand": f'python3 -c "{PBT_TRIAL}"'}
    experiment_id = f"mt{uuid.uuid4().hex[:8]}"
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=config))
    state = await wait_finished(stack, experiment_id, timeout=120)
    assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
    trials = state.by_sequence()
    assert all(t.status == TrialStatus.SUCCEEDED for t in trials), state.trials_by_status()
    # Stored parameters keep the references; each step's trials loaded the step before's checkpoint.
    assert [t.parameters["save_checkpoint_dir"] for t in trials] == \
        [f"tunebus-checkpoints/{m}/{s}" for s in range(3) for m in range(2)]
    assert [int((t.final_value or 0) // 10) for t in trials] == [1, 1, 2, 2, 3, 3]
    # The worse member of a step goes on from the better one's checkpoint (fraction 0.5: one each).
    for step in (1, 2):
        before = trials[2 * step - 2: 2 * step]
        best = max(range(2), key=lambda m: before[m].final_value or 0.0)
        loads = sorted(t.parameters["load_checkpoint_dir"] for t in trials[2 * step: 2 * step + 2])
        assert loads == [f"tunebus-checkpoints/{best}/{step - 1}"] * 2
    async with BlobStore(stack.env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                         stack.env["TUNEBUS_STORAGE_CONTAINER"]) as store:
        saved = await store.list(f"{Layout(experiment_id).root}/checkpoints/")
        last = await store.read_json(Layout(experiment_id).checkpoint_prefix(1, 2) + "sub/state.json")
    assert len(saved) == 6 and last is not None and last[0] == {"steps": 3}
