"""NNI's PBT tuner: population steps in lockstep, exploit and explore, checkpoint folders, rebuild."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from services.tuner.algorithms import TunerConfigError, WaitForResults, create_tuner
from shared.checkpoints import managed_checkpoints, parse_checkpoint_ref

SPACE: dict[str, Any] = {
    "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
    "width": {"_type": "quniform", "_value": [8, 64, 8]},
    "act": {"_type": "choice", "_value": ["relu", "tanh", "gelu"]},
    "depth": {"_type": "randint", "_value": [1, 5]},
    "drop": {"_type": "uniform", "_value": [0.0, 0.5]},
    "mom": {"_type": "normal", "_value": [0.9, 0.05]},
    "wd": {"_type": "qlognormal", "_value": [-6, 1, 0.001]},
}


def pbt(seed: int = 1, space: dict[str, Any] | None = None, **args: Any) -> Any:
    return create_tuner("PBT", {"optimize_mode": "maximize", "seed": seed, "population_size": 4, **args},
                        space or SPACE)


def score(p: dict[str, Any]) -> float:
    """Higher with lr near 0.01 (the trial's "accuracy" after a step)."""
    return -abs(math.log10(p["lr"]) + 2)


def run_steps(tuner: Any, steps: int, population: int = 4, first_id: int = 0) -> list[dict[str, Any]]:
    """Run ``steps`` whole steps: hand out the population, then report all of it."""
    handed = []
    pid = first_id
    for _ in range(steps):
        step = [(pid + i, tuner.generate_parameters(pid + i)) for i in range(population)]
        pid += population
        with pytest.raises(WaitForResults):
            tuner.generate_parameters(pid)
        for done, params in step:
            tuner.receive_trial_result(done, params, score(params))
        handed += [params for _, params in step]
    return handed


def test_first_step_loads_and_saves_in_each_members_folder_under_the_experiments_storage() -> None:
    tuner = pbt()
    first = [tuner.generate_parameters(i) for i in range(4)]
    assert [(p["load_checkpoint_dir"], p["save_checkpoint_dir"]) for p in first] == \
        [(f"tunebus-checkpoints/{m}/0",) * 2 for m in range(4)]
    assert [parse_checkpoint_ref(p["save_checkpoint_dir"]) for p in first] == [(m, 0) for m in range(4)]
    with pytest.raises(WaitForResults):  # step 1 starts when every trial of step 0 has ended
        tuner.generate_parameters(4)


def test_all_checkpoint_dir_gives_nnis_folders() -> None:
    tuner = pbt(all_checkpoint_dir="/mnt/shared/ckpt")
    handed = run_steps(tuner, 2)
    assert handed[0]["save_checkpoint_dir"] == "/mnt/shared/ckpt/0/0"
    assert [p["save_checkpoint_dir"] for p in handed[4:]] == [f"/mnt/shared/ckpt/{m}/1" for m in range(4)]


def test_the_bottom_member_takes_a_top_members_checkpoint_and_perturbed_parameters() -> None:
    tuner = pbt(fraction=0.25, resample_probability=0.0)  # cutoff ceil(0.25 * 4) = 1
    step0 = [tuner.generate_parameters(i) for i in range(4)]
    scores = [score(p) for p in step0]
    best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    for i, params in enumerate(step0):
        tuner.receive_trial_result(i, params, scores[i])
    step1 = [tuner.generate_parameters(4 + i) for i in range(4)]
    for member, params in enumerate(step1):
        assert params["save_checkpoint_dir"] == f"tunebus-checkpoints/{member}/1"
        hyper = {k: v for k, v in params.items() if not k.endswith("_checkpoint_dir")}
        before = {k: v for k, v in step0[member].items() if not k.endswith("_checkpoint_dir")}
        if member == worst:
            assert params["load_checkpoint_dir"] == f"tunebus-checkpoints/{best}/0"
            assert_neighbours(hyper, {k: v for k, v in step0[best].items()
                                      if not k.endswith("_checkpoint_dir")})
        else:  # goes on from its own checkpoint, unchanged
            assert params["load_checkpoint_dir"] == f"tunebus-checkpoints/{member}/0"
            assert hyper == before


def assert_neighbours(new: dict[str, Any], top: dict[str, Any]) -> None:
    """Every parameter moved one perturbation step from the top's, within its range."""
    options = SPACE["act"]["_value"]
    assert abs(options.index(new["act"]) - options.index(top["act"])) <= 1
    assert abs(new["depth"] - top["depth"]) <= 1 and 1 <= new["depth"] <= 4
    assert abs(new["width"] - top["width"]) in (0, 8) and 8 <= new["width"] <= 64
    span = 0.2 * (math.log(1e-1) - math.log(1e-4))
    assert abs(math.log(new["lr"]) - math.log(top["lr"])) <= span + 1e-9 and 1e-4 <= new["lr"] <= 1e-1
    assert abs(new["drop"] - top["drop"]) <= 0.1 + 1e-9 and 0 <= new["drop"] <= 0.5
    assert abs(abs(new["mom"] - top["mom"]) - 0.2 * 0.05) < 1e-9  # normal: factor * sigma, no clip
    assert abs(abs(new["wd"] - top["wd"]) - 0.001) < 1e-9 or new["wd"] == 0


def test_minimize_keeps_the_lowest_and_a_trial_without_a_result_ranks_last() -> None:
    tuner = create_tuner("PBT", {"optimize_mode": "minimize", "seed": 2, "population_size": 3,
                                 "fraction": 0.3}, SPACE)
    step0 = [tuner.generate_parameters(i) for i in range(3)]
    tuner.receive_trial_result(0, step0[0], 5.0)
    tuner.trial_end(1, False)  # failed: no result
    tuner.receive_trial_result(2, step0[2], 1.0)
    step1 = [tuner.generate_parameters(3 + i) for i in range(3)]
    assert step1[1]["load_checkpoint_dir"] == "tunebus-checkpoints/2/0"  # member 1 copies the best
    assert step1[0]["load_checkpoint_dir"] == "tunebus-checkpoints/0/0"


def test_the_population_improves_over_steps() -> None:
    gains = []
    for seed in range(4):
        handed = run_steps(pbt(seed=seed, population_size=8), 12, population=8)
        gains.append(np.mean([score(p) for p in handed[-8:]]) - np.mean([score(p) for p in handed[:8]]))
    assert min(gains) > 0.05 and np.mean(gains) > 0.25  # measured: 0.07 to 0.55, mean 0.36


def test_same_seed_same_runs_different_seed_different_runs_and_no_duplicates() -> None:
    a, b = run_steps(pbt(seed=4), 5), run_steps(pbt(seed=4), 5)
    assert a == b
    assert a != run_steps(pbt(seed=5), 5)
    assert len({json.dumps(p, sort_keys=True) for p in a}) == len(a)  # a save folder per member and step


def test_rebuilt_from_recorded_trials_continues_like_the_uninterrupted_one() -> None:
    uninterrupted = pbt(seed=6)
    handed = run_steps(uninterrupted, 2)
    running = [(8 + i, uninterrupted.generate_parameters(8 + i)) for i in range(3)]  # step 2, in flight
    uninterrupted.receive_trial_result(8, running[0][1], score(running[0][1]))
    records = [{"parameter": p, "value": score(p), "ended": True} for p in handed]
    records += [{"parameter": running[0][1], "value": score(running[0][1]), "ended": True}]
    records += [{"parameter": p, "value": None, "ended": False} for _, p in running[1:]]

    rebuilt = pbt(seed=6)
    assert rebuilt.import_data(records) == 11
    for pid, params in running[1:]:  # trials that ran across the restart: found by their save folder
        for tuner in (uninterrupted, rebuilt):
            tuner.receive_trial_result(pid, params, score(params))
    assert rebuilt.generate_parameters(11) == uninterrupted.generate_parameters(11)  # step 2's last
    for tuner in (uninterrupted, rebuilt):
        tuner.receive_trial_result(11, tuner.generate_parameters(11), 0.0)
    assert run_steps(rebuilt, 2, first_id=12) == run_steps(uninterrupted, 2, first_id=12)


def test_records_from_another_search_space_are_left_out() -> None:
    tuner = pbt()
    assert tuner.import_data([{"parameter": {"y": 1, "save_checkpoint_dir": "elsewhere/0/0"},
                               "value": 1.0, "ended": True}]) == 0
    assert tuner.generate_parameters(0)["save_checkpoint_dir"] == "tunebus-checkpoints/0/0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "classArgs.optimize_mode is required"),
        ({"optimize_mode": "best"}, "classArgs.optimize_mode must be 'maximize' or 'minimize'"),
        ({"optimize_mode": "maximize", "population_size": 0}, "classArgs.population_size must be >= 1"),
        ({"optimize_mode": "maximize", "fraction": 1.5}, "classArgs.fraction must be between 0 and 1"),
        ({"optimize_mode": "maximize", "resample_probability": -0.1},
         "classArgs.resample_probability must be between 0 and 1"),
        ({"optimize_mode": "maximize", "factor": "big"}, "classArgs.factor must be a number"),
        ({"optimize_mode": "maximize", "all_checkpoint_dir": ""}, "classArgs.all_checkpoint_dir must be a "
                                                                  "non-blank string"),
        ({"optimize_mode": "maximize", "factors": 0.2}, "classArgs.factors is not a known argument"),
    ],
)
def test_class_args_are_checked(args: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match="tuner 'PBT'") as caught:
        create_tuner("PBT", args, SPACE)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"save_checkpoint_dir": {"_type": "choice", "_value": ["a"]}}, "may not have a parameter named"),
        ({"opt": {"_type": "choice",
                  "_value": [{"_name": "sgd", "m": {"_type": "uniform", "_value": [0, 1]}}]}},
         "flat parameters only"),
    ],
)
def test_refused_search_spaces(space: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match=message):
        create_tuner("PBT", {"optimize_mode": "maximize"}, space)


def test_nnis_alias_and_which_experiments_tunebus_keeps_checkpoints_for() -> None:
    assert create_tuner("PBTTuner", {"optimize_mode": "maximize"}, SPACE).name == "PBT"
    assert managed_checkpoints({"tuner": {"name": "PBT", "classArgs": {"optimize_mode": "maximize"}}})
    assert not managed_checkpoints({"tuner": {"name": "PBT", "classArgs": {"all_checkpoint_dir": "/mnt/c"}}})
    assert not managed_checkpoints({"tuner": {"name": "TPE"}})
    assert parse_checkpoint_ref("tunebus-checkpoints/3/12") == (3, 12)
    for bad in ("tunebus-checkpoints/3/12/../x", "tunebus-checkpoints/-1/0", "/abs/3/1", 7,
                "tunebus-checkpoints/01/2", "tunebus-checkpoints/1/" + "9" * 12):
        assert parse_checkpoint_ref(bad) is None
