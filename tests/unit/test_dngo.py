"""NNI's DNGO tuner: the tuner contract, the model, and configuration."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from services.tuner.algorithms import TunerConfigError, create_tuner
from services.tuner.algorithms.dngo import NeuralBayesRegressor

SPACE: dict[str, Any] = {
    "x": {"_type": "uniform", "_value": [-5.0, 10.0]},
    "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
    "batch": {"_type": "quniform", "_value": [16, 128, 16]},
    "width": {"_type": "qloguniform", "_value": [8, 512, 8]},
    "layers": {"_type": "randint", "_value": [1, 5]},
    "momentum": {"_type": "choice", "_value": [0.9, 0.5, 0.99]},
}
FAST = {"trials_per_update": 6, "num_epochs_per_training": 60, "sample_size": 200}


def dngo(seed: int = 3, space: dict[str, Any] | None = None, **args: Any) -> Any:
    return create_tuner("DNGO", {"optimize_mode": "minimize", "seed": seed, **FAST, **args}, space or SPACE)


def loss(p: dict[str, Any]) -> float:
    return ((p["x"] - 2.0) ** 2 + abs(math.log10(p["lr"]) + 2) + 0.01 * p["batch"] + 0.1 * p["layers"]
            + (p["momentum"] - 0.9) ** 2)


def key(p: Any) -> str:
    return json.dumps(p, sort_keys=True)


def drive(tuner: Any, trials: int, batch: int = 1) -> list[dict[str, Any]]:
    """Keep ``batch`` trials in flight, report the oldest first (as the service does)."""
    suggested, pending, next_id = [], [], 0
    while next_id < trials or pending:
        while next_id < trials and len(pending) < batch:
            params = tuner.generate_parameters(next_id)
            suggested.append(params)
            pending.append((next_id, params))
            next_id += 1
        parameter_id, params = pending.pop(0)
        tuner.receive_trial_result(parameter_id, params, loss(params))
        tuner.trial_end(parameter_id, True)
    return suggested


def test_suggestions_lie_in_the_space_and_pending_ones_differ() -> None:
    suggested = drive(dngo(), 16, batch=4)
    for p in suggested:
        assert -5 <= p["x"] <= 10 and 1e-4 <= p["lr"] <= 1e-1
        assert 16 <= p["batch"] <= 128 and p["batch"] % 16 == 0 and 8 <= p["width"] <= 512
        assert type(p["layers"]) is int and 1 <= p["layers"] <= 4 and p["momentum"] in (0.9, 0.5, 0.99)
    assert len({key(p) for p in suggested}) == len(suggested)


def test_same_seed_same_suggestions() -> None:
    assert drive(dngo(seed=5), 14, batch=3) == drive(dngo(seed=5), 14, batch=3)
    assert drive(dngo(seed=5), 10) != drive(dngo(seed=6), 10)


def test_rebuilt_from_history_continues_as_the_uninterrupted_one() -> None:
    # Rebuilt when the results are a multiple of trials_per_update, the model is the same model.
    uninterrupted = dngo()
    history = []
    for pid in range(12):
        params = uninterrupted.generate_parameters(pid)
        uninterrupted.receive_trial_result(pid, params, loss(params))
        history.append({"parameter": params, "value": loss(params)})
    expected = [uninterrupted.generate_parameters(pid) for pid in range(12, 15)]
    rebuilt = dngo()
    assert rebuilt.import_data(list(reversed(history))) == 12  # the order of the records does not matter
    assert [rebuilt.generate_parameters(pid) for pid in range(12, 15)] == expected


def test_random_until_the_first_update_then_the_model_decides() -> None:
    tuner = dngo()
    for pid in range(5):
        params = tuner.generate_parameters(pid)
        tuner.receive_trial_result(pid, params, loss(params))
    assert tuner.model is None
    params = tuner.generate_parameters(5)
    tuner.receive_trial_result(5, params, loss(params))
    assert tuner.model is not None


def test_the_model_predicts_a_smooth_function_with_calibrated_uncertainty() -> None:
    rng = np.random.default_rng(0)
    x, test = rng.random((40, 2)), rng.random((300, 2))

    def f(u: np.ndarray) -> np.ndarray:
        return np.sin(6 * u[:, 0]) + (u[:, 1] - 0.5) ** 2

    model = NeuralBayesRegressor(2, np.random.default_rng(1)).fit(x, f(x), 300, np.random.default_rng(2))
    mean, std = model.predict(test)
    assert np.corrcoef(mean, f(test))[0, 1] > 0.9
    assert std.min() > 0 and np.mean(np.abs(mean - f(test)) < 3 * std) > 0.6


def branin(p: dict[str, float]) -> float:
    x, y = p["x"], p["y"]
    bowl = (y - 5.1 / (4 * math.pi**2) * x * x + 5 / math.pi * x - 6) ** 2
    return bowl + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10


def test_finds_branins_minimum_better_than_random() -> None:
    space = {"x": {"_type": "uniform", "_value": [-5, 10]}, "y": {"_type": "uniform", "_value": [0, 15]}}

    def regret(name: str, args: dict[str, Any], seed: int) -> float:
        tuner = create_tuner(name, {**args, "seed": seed}, space)
        values = []
        for pid in range(40):
            p = tuner.generate_parameters(pid)
            values.append(branin(p))
            tuner.receive_trial_result(pid, p, values[-1])
        return min(values) - 0.397887

    dngo_regret = [regret("DNGO", {"optimize_mode": "minimize", **FAST, "trials_per_update": 10}, s)
                   for s in range(3)]
    random_regret = [regret("Random", {}, s) for s in range(3)]
    assert np.mean(dngo_regret) < np.mean(random_regret)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"optimize_mode": "best"}, "classArgs.optimize_mode must be 'maximize' or 'minimize'"),
        ({"sample_size": 0}, "classArgs.sample_size must be >= 1"),
        ({"trials_per_update": 1.5}, "classArgs.trials_per_update must be an integer"),
        ({"num_epochs_per_training": 10**6}, "classArgs.num_epochs_per_training must be <= 100000"),
        ({"optimize": "maximize"}, "classArgs.optimize is not a known argument"),
    ],
)
def test_class_args_are_checked(args: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match="tuner 'DNGO'") as caught:
        create_tuner("DNGO", args, SPACE)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"m": {"_type": "normal", "_value": [0, 1]}}, "type 'normal'; DNGO supports"),
        ({"act": {"_type": "choice", "_value": ["relu", "tanh"]}}, "a choice of numbers only"),
    ],
)
def test_refused_search_spaces(space: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match=message):
        create_tuner("DNGO", {}, space)


def test_nnis_alias() -> None:
    assert create_tuner("DNGOTuner", {}, SPACE).name == "DNGO"
