"""Tuning algorithms: one contract every built-in tuner meets, then what is specific to each."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from services.tuner.algorithms import NoMoreTrials, TunerConfigError, create_tuner
from tests.unit.tuner_contract import assert_rebuilt_continues, branin_regret, drive, key

BUILTINS = ["TPE", "Random", "Anneal", "GridSearch", "Evolution"]

MIXED_SPACE: dict[str, Any] = {
    "activation": {"_type": "choice", "_value": ["relu", "tanh", 3]},
    "layers": {"_type": "randint", "_value": [1, 5]},
    "dropout": {"_type": "uniform", "_value": [0.0, 0.5]},
    "batch": {"_type": "quniform", "_value": [16, 128, 16]},
    "lr": {"_type": "loguniform", "_value": [1e-5, 1e-1]},
    "width": {"_type": "qloguniform", "_value": [8, 512, 8]},
    "shift": {"_type": "normal", "_value": [0.0, 1.0]},
    "offset": {"_type": "qnormal", "_value": [10.0, 3.0, 2.0]},
    "scale": {"_type": "lognormal", "_value": [0.0, 0.5]},
    "count": {"_type": "qlognormal", "_value": [2.0, 1.0, 1.0]},
    "optimizer": {
        "_type": "choice",
        "_value": [
            {"_name": "sgd", "momentum": {"_type": "uniform", "_value": [0.0, 1.0]}},
            {"_name": "adam", "beta": {"_type": "loguniform", "_value": [0.5, 0.999]}},
            {"_name": "plain"},
        ],
    },
}

SMALL_SPACE: dict[str, Any] = {  # 3 x 2 x 2 = 12 points
    "kind": {"_type": "choice", "_value": ["a", "b", "c"]},
    "n": {"_type": "randint", "_value": [0, 2]},
    "q": {"_type": "quniform", "_value": [0, 1, 1]},
}


def make(name: str, space: dict[str, Any] | None = None, seed: int = 7, **args: Any) -> Any:
    class_args: dict[str, Any] = {} if name == "GridSearch" else {"seed": seed}
    if name in ("TPE", "Anneal", "Evolution"):
        class_args["optimize_mode"] = "minimize"
    if name == "Evolution":
        class_args["population_size"] = 8
    class_args.update(args)
    return create_tuner(name, class_args, space if space is not None else MIXED_SPACE)


def objective(params: dict[str, Any]) -> float:
    """Any deterministic number of the parameters will do for contract tests."""
    return (params["dropout"] - 0.2) ** 2 + abs(math.log10(params["lr"]) + 3) + 0.1 * params["layers"]


def assert_in_mixed_space(p: dict[str, Any]) -> None:
    assert p["activation"] in ("relu", "tanh", 3)
    assert type(p["layers"]) is int and 1 <= p["layers"] <= 4
    assert 0.0 <= p["dropout"] <= 0.5
    assert 16 <= p["batch"] <= 128 and p["batch"] % 16 == 0
    assert 1e-5 <= p["lr"] <= 1e-1
    assert 8 <= p["width"] <= 512 and p["width"] % 8 == 0
    assert isinstance(p["shift"], float)
    assert p["offset"] % 2 == 0
    assert p["scale"] > 0
    assert p["count"] >= 0 and p["count"] == round(p["count"])
    optimizer = p["optimizer"]
    expected = {"sgd": {"_name", "momentum"}, "adam": {"_name", "beta"}, "plain": {"_name"}}[
        optimizer["_name"]
    ]
    assert set(optimizer) == expected
    if "momentum" in optimizer:
        assert 0 <= optimizer["momentum"] <= 1
    if "beta" in optimizer:
        assert 0.5 <= optimizer["beta"] <= 0.999


@pytest.mark.parametrize("name", BUILTINS)
class TestTunerContract:
    """What the service relies on, for every built-in tuner."""

    def test_suggestions_lie_in_the_space_in_nni_format(self, name: str) -> None:
        for params in drive(make(name), 40, objective, batch=4):
            assert_in_mixed_space(params)

    def test_same_seed_and_calls_give_the_same_suggestions(self, name: str) -> None:
        first, second = (drive(make(name, seed=3), 30, objective, batch=3) for _ in range(2))
        assert first == second

    def test_pending_trials_never_get_identical_parameters_until_exhausted(self, name: str) -> None:
        tuner = make(name, SMALL_SPACE)
        suggested = [tuner.generate_parameters(i) for i in range(12)]  # none reports: all pending
        assert len({key(p) for p in suggested}) == 12
        with pytest.raises(NoMoreTrials):
            tuner.generate_parameters(12)

    def test_generate_multiple_stops_at_exhaustion(self, name: str) -> None:
        tuner = make(name, SMALL_SPACE)
        assert len(tuner.generate_multiple_parameters(list(range(20)))) == 12

    def test_results_do_not_repeat_after_learning(self, name: str) -> None:
        tuner = make(name, SMALL_SPACE)
        seen = set()
        for i in range(12):
            params = tuner.generate_parameters(i)
            assert key(params) not in seen
            seen.add(key(params))
            tuner.receive_trial_result(i, params, {"default": float(i % 5), "loss": 1.0})
        with pytest.raises(NoMoreTrials):
            tuner.generate_parameters(12)

    def test_imported_trials_count_as_tried(self, name: str) -> None:
        tuner = make(name, SMALL_SPACE)
        every = [{"kind": k, "n": n, "q": q} for k in "abc" for n in (0, 1) for q in (0.0, 1.0)]
        records = [{"parameter": p, "value": float(i)} for i, p in enumerate(every[:11])]
        records.append({"parameter": {"kind": "zzz", "n": 0, "q": 0.0}, "value": 1.0})  # not in the space
        tuner.import_data(records)
        assert tuner.generate_parameters(0) == every[11]
        with pytest.raises(NoMoreTrials):
            tuner.generate_parameters(1)

    def test_imported_trials_without_value_are_not_repeated(self, name: str) -> None:
        tuner = make(name, SMALL_SPACE)
        every = [{"kind": k, "n": n, "q": q} for k in "abc" for n in (0, 1) for q in (0.0, 1.0)]
        assert tuner.import_data([{"parameter": p, "value": None} for p in every[1:]]) == 0
        assert tuner.generate_parameters(0) == every[0]

    def test_trial_end_without_result_drops_the_pending_trial(self, name: str) -> None:
        tuner = make(name)
        params = [tuner.generate_parameters(i) for i in range(3)]
        tuner.trial_end(1, False)
        assert 1 not in tuner.pending and set(tuner.pending) == {0, 2}
        tuner.receive_trial_result(0, params[0], 1.0)
        tuner.trial_end(0, True)
        assert set(tuner.pending) == {2}

    def test_repeated_result_counts_once(self, name: str) -> None:
        tuner = make(name)
        params = tuner.generate_parameters(0)
        tuner.receive_trial_result(0, params, 1.0)
        tuner.receive_trial_result(0, params, 1.0)
        assert len(tuner.history) == 1

    def test_update_search_space_first(self, name: str) -> None:
        tuner = create_tuner(name, {} if name != "Evolution" else {"optimize_mode": "maximize"}, None)
        with pytest.raises(RuntimeError, match="update_search_space"):
            tuner.generate_parameters(0)


# ---------------------------------------------------------------- the model tuners' contract

# GP, Metis and DNGO take numbers only (as in NNI): the same contract over numeric spaces, with
# classArgs that make their models start early and run fast.
MODEL_TUNERS = {
    "GP": {"cold_start_num": 4, "selection_num_warm_up": 500, "selection_num_starting_points": 10},
    "Metis": {"cold_start_num": 4, "selection_num_starting_points": 40},
    "DNGO": {"trials_per_update": 5, "num_epochs_per_training": 30, "sample_size": 100},
}
NUMERIC_SPACE: dict[str, Any] = {
    "layers": {"_type": "randint", "_value": [1, 5]},
    "dropout": {"_type": "uniform", "_value": [0.0, 0.5]},
    "batch": {"_type": "quniform", "_value": [16, 128, 16]},
    "lr": {"_type": "uniform", "_value": [1e-5, 1e-1]},
    "momentum": {"_type": "choice", "_value": [0.5, 0.9, 0.99]},
}
SMALL_NUMERIC_SPACE: dict[str, Any] = {  # 3 x 2 x 2 = 12 points
    "kind": {"_type": "choice", "_value": [1, 2, 3]},
    "n": {"_type": "randint", "_value": [0, 2]},
    "q": {"_type": "quniform", "_value": [0, 1, 1]},
}


def make_model_tuner(name: str, space: dict[str, Any] | None = None, seed: int = 7) -> Any:
    args = {"optimize_mode": "minimize", "seed": seed, **MODEL_TUNERS[name]}
    return create_tuner(name, args, space if space is not None else NUMERIC_SPACE)


@pytest.mark.parametrize("name", list(MODEL_TUNERS))
class TestModelTunerContract:
    """What the service relies on, for the built-in tuners that model numeric spaces."""

    def test_suggestions_lie_in_the_space(self, name: str) -> None:
        for p in drive(make_model_tuner(name), 16, objective, batch=4):
            assert type(p["layers"]) is int and 1 <= p["layers"] <= 4 and 0.0 <= p["dropout"] <= 0.5
            assert 16 <= p["batch"] <= 128 and p["batch"] % 16 == 0 and p["momentum"] in (0.5, 0.9, 0.99)

    def test_same_seed_and_calls_give_the_same_suggestions(self, name: str) -> None:
        assert drive(make_model_tuner(name, seed=3), 12, objective, batch=3) == \
            drive(make_model_tuner(name, seed=3), 12, objective, batch=3)

    def test_rebuilt_from_history_suggests_as_the_uninterrupted_one(self, name: str) -> None:
        # 10 results: for DNGO a multiple of trials_per_update, so the same model.
        assert_rebuilt_continues(lambda: make_model_tuner(name), objective, 10)

    def test_pending_trials_never_get_identical_parameters_until_exhausted(self, name: str) -> None:
        tuner = make_model_tuner(name, SMALL_NUMERIC_SPACE)
        for i in range(6):  # half of the space learned, so the model is in play
            params = tuner.generate_parameters(i)
            tuner.receive_trial_result(i, params, float(params["kind"] + params["n"]))
        suggested = [tuner.generate_parameters(i) for i in range(6, 12)]  # all pending
        assert len({key(p) for p in suggested}) == 6
        with pytest.raises(NoMoreTrials):
            tuner.generate_parameters(12)

    def test_repeated_result_counts_once_and_failed_trials_stop_pending(self, name: str) -> None:
        tuner = make_model_tuner(name)
        params = [tuner.generate_parameters(i) for i in range(2)]
        tuner.receive_trial_result(0, params[0], 1.0)
        tuner.receive_trial_result(0, params[0], 1.0)
        tuner.trial_end(1, False)
        assert len(tuner.history) == 1 and not tuner.pending


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        (
            "TPE",
            {"optimize_mode": "max"},
            "tuner 'TPE': classArgs.optimize_mode must be 'maximize' or 'minimize', got 'max'",
        ),
        ("TPE", {"seed": "1"}, "tuner 'TPE': classArgs.seed must be an integer"),
        (
            "TPE",
            {"tpe_args": {"n_ei_candidates": 0}},
            "tuner 'TPE': classArgs.tpe_args.n_ei_candidates must be >= 1",
        ),
        (
            "TPE",
            {"tpe_args": {"constant_liar_type": "max"}},
            "classArgs.tpe_args.constant_liar_type must be one of",
        ),
        ("TPE", {"tpe_args": {"gama": 0.2}}, "classArgs.tpe_args.gama is not a known argument"),
        (
            "TPE",
            {"optimise_mode": "minimize"},
            "tuner 'TPE': classArgs.optimise_mode is not a known argument",
        ),
        ("Evolution", {"population_size": 1}, "tuner 'Evolution': classArgs.population_size must be >= 2"),
        ("Random", {"seed": -1}, "tuner 'Random': classArgs.seed must be >= 0"),
        ("SMAC", {}, "tuner 'SMAC': unknown tuner"),
    ],
)
def test_bad_configuration_names_tuner_and_argument(name: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError) as caught:
        create_tuner(name, args, MIXED_SPACE)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_nni_tpe_args_are_accepted() -> None:
    args = {
        "optimize_mode": "maximize",
        "seed": 1,
        "tpe_args": {
            "constant_liar_type": "mean",
            "n_startup_jobs": 5,
            "n_ei_candidates": 32,
            "linear_forgetting": 20,
            "prior_weight": 0.5,
            "gamma": 0.2,
        },
    }
    assert_in_mixed_space(create_tuner("TPE", args, MIXED_SPACE).generate_parameters(0))


# ---------------------------------------------------------------- algorithm-specific behaviour


def test_grid_search_enumerates_a_finite_space_in_order_then_ends() -> None:
    tuner = create_tuner(
        "GridSearch",
        None,
        {"a": {"_type": "choice", "_value": [1, 2]}, "b": {"_type": "randint", "_value": [0, 3]}},
    )
    got = tuner.generate_multiple_parameters(list(range(10)))
    assert got == [{"a": a, "b": b} for a in (1, 2) for b in (0, 1, 2)]
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(10)


def test_grid_search_refines_continuous_ranges_progressively() -> None:
    tuner = create_tuner("GridSearch", None, {"x": {"_type": "uniform", "_value": [0, 8]}})
    assert [tuner.generate_parameters(i)["x"] for i in range(7)] == [4.0, 2.0, 6.0, 1.0, 3.0, 5.0, 7.0]


def test_grid_search_on_quantised_range_is_finite() -> None:
    tuner = create_tuner("GridSearch", None, {"x": {"_type": "quniform", "_value": [0, 10, 5]}})
    values = [p["x"] for p in tuner.generate_multiple_parameters(list(range(20)))]
    assert sorted(values) == [0.0, 5.0, 10.0]


def test_tpe_pending_suggestions_spread_out() -> None:
    space = {f"x{i}": {"_type": "uniform", "_value": [0, 1]} for i in range(3)}
    tuner = create_tuner("TPE", {"seed": 0, "optimize_mode": "minimize"}, space)
    for i in range(30):
        p = tuner.generate_parameters(i)
        tuner.receive_trial_result(i, p, sum((v - 0.5) ** 2 for v in p.values()))
    batch = np.array([list(tuner.generate_parameters(100 + i).values()) for i in range(8)])
    distances = np.linalg.norm(batch[:, None] - batch[None], axis=-1)[np.triu_indices(8, 1)]
    assert distances.min() > 0.005


def test_tpe_maximize_and_minimize_go_opposite_ways() -> None:
    space = {"x": {"_type": "uniform", "_value": [0, 1]}}
    late = {}
    for mode in ("maximize", "minimize"):
        tuner = create_tuner("TPE", {"seed": 0, "optimize_mode": mode}, space)
        xs = []
        for i in range(40):
            p = tuner.generate_parameters(i)
            tuner.receive_trial_result(i, p, p["x"])
            xs.append(p["x"])
        late[mode] = float(np.mean(xs[-10:]))
    assert late["maximize"] > 0.8 and late["minimize"] < 0.2


def test_tpe_beats_random_search() -> None:
    seeds = range(4)
    tpe = np.mean([branin_regret("TPE", {"seed": s}, 40) for s in seeds])
    random = np.mean([branin_regret("Random", {"seed": s}, 40) for s in seeds])
    assert tpe < 0.5 * random


def test_evolution_mutates_good_members_after_the_initial_population() -> None:
    space = {"x": {"_type": "uniform", "_value": [0, 1]}, "y": {"_type": "uniform", "_value": [0, 1]}}
    tuner = create_tuner("Evolution", {"optimize_mode": "maximize", "population_size": 10, "seed": 0}, space)
    values = []
    for i in range(120):
        p = tuner.generate_parameters(i)
        values.append(-((p["x"] - 0.7) ** 2) - (p["y"] - 0.2) ** 2)
        tuner.receive_trial_result(i, p, values[-1])
    assert np.mean(values[-20:]) > np.mean(values[:10])


# ---------------------------------------------------------------- custom tuners
