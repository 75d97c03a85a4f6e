"""NNI's DNGO tuner: the tuner contract, the model, and configuration."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.tuner.algorithms import TunerConfigError, create_tuner
from services.tuner.algorithms.dngo import NeuralBayesRegressor
from tests.unit.tuner_contract import NUMERIC_TYPES_SPACE as SPACE
from tests.unit.tuner_contract import assert_rebuilt_continues, branin_regret, drive, key
from tests.unit.tuner_contract import numeric_loss as loss

FAST = {"trials_per_update": 6, "num_epochs_per_training": 60, "sample_size": 200}


def dngo(seed: int = 3, space: dict[str, Any] | None = None, **args: Any) -> Any:
    return create_tuner("DNGO", {"optimize_mode": "minimize", "seed": seed, **FAST, **args}, space or SPACE)


def test_suggestions_lie_in_the_space_and_pending_ones_differ() -> None:
    suggested = drive(dngo(), 16, loss, batch=4)
    for p in suggested:
        assert -5 <= p["x"] <= 10 and 1e-4 <= p["lr"] <= 1e-1
        assert 16 <= p["batch"] <= 128 and p["batch"] % 16 == 0 and 8 <= p["width"] <= 512
        assert type(p["layers"]) is int and 1 <= p["layers"] <= 4 and p["momentum"] in (0.9, 0.5, 0.99)
    assert len({key(p) for p in suggested}) == len(suggested)


def test_same_seed_same_suggestions() -> None:
    assert drive(dngo(seed=5), 14, loss, batch=3) == drive(dngo(seed=5), 14, loss, batch=3)
    assert drive(dngo(seed=5), 10, loss) != drive(dngo(seed=6), 10, loss)


def test_rebuilt_from_history_continues_as_the_uninterrupted_one() -> None:
    # Rebuilt when the results are a multiple of trials_per_update, the model is the same model.
    assert_rebuilt_continues(dngo, loss, 12, reverse=True)  # the order of the records does not matter


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


def test_a_pending_point_is_believed_its_predicted_mean_and_loses_its_uncertainty() -> None:
    # Trials in flight (a kriging believer in the last layer): each is taken in as if it had
    # scored what the model predicts there. The mean stays; the uncertainty near it falls, so
    # expected improvement sends the next suggestion elsewhere instead of next to it.
    rng = np.random.default_rng(0)
    x, test = rng.random((30, 2)), rng.random((200, 2))
    y = np.sin(6 * x[:, 0]) + x[:, 1]
    model = NeuralBayesRegressor(2, np.random.default_rng(1)).fit(x, y, 200, np.random.default_rng(2))
    pending = np.array([[0.9, 0.1], [0.2, 0.8]])
    believer = model.believing(pending)
    mean, std = model.predict(test)
    believed_mean, believed_std = believer.predict(test)
    np.testing.assert_allclose(believed_mean, mean, rtol=1e-9, atol=1e-9)
    assert np.all(believed_std <= std + 1e-12)
    at_pending = model.predict(pending)[1], believer.predict(pending)[1]
    far = np.linalg.norm(test[:, None, :] - pending[None, :, :], axis=2).min(axis=1) > 0.5
    assert np.all(at_pending[1] < at_pending[0])  # the pending points themselves lose the most
    assert np.mean(std[far] - believed_std[far]) < np.mean(at_pending[0] - at_pending[1])
    assert model.predict(test)[1].tolist() == std.tolist()  # the fitted model is left as it was


def test_suggestions_are_scored_by_a_model_that_believes_the_trials_in_flight() -> None:
    # Not only the random draw keeps parallel suggestions apart: at a pending trial the model
    # used for the next suggestion is surer than the fitted one.
    tuner = dngo(seed=4)
    for pid in range(6):
        params = tuner.generate_parameters(pid)
        tuner.receive_trial_result(pid, params, loss(params))
    assert tuner.model is not None
    tuner.generate_parameters(6)
    cube = np.array([tuner._to_cube(tuner.pending[6])])
    assert tuner._model_for_suggestion().predict(cube)[1][0] < tuner.model.predict(cube)[1][0]


def test_finds_branins_minimum_better_than_random() -> None:
    dngo_args = {"optimize_mode": "minimize", **FAST, "trials_per_update": 10}
    dngo_regret = [branin_regret("DNGO", {**dngo_args, "seed": s}, 40) for s in range(3)]
    random_regret = [branin_regret("Random", {"seed": s}, 40) for s in range(3)]
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
