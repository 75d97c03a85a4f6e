"""NNI's other built-in tuners (Batch, GP): the service's contract, then what is specific to each."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.tuner.algorithms import NoMoreTrials, TunerConfigError, create_tuner
from tests.unit.tuner_contract import (
    FINITE_SPACE,
    assert_never_repeats_until_exhausted,
    assert_rebuilt_continues,
    branin_regret,
    drive,
)
from tests.unit.tuner_contract import NUMERIC_TYPES_SPACE as GP_SPACE
from tests.unit.tuner_contract import numeric_loss as loss

FAST_GP = {"cold_start_num": 4, "selection_num_warm_up": 2000, "selection_num_starting_points": 20}


def gp(seed: int = 3, space: dict[str, Any] | None = None, **args: Any) -> Any:
    class_args = {"optimize_mode": "minimize", "seed": seed, **FAST_GP, **args}
    return create_tuner("GP", class_args, space or GP_SPACE)


# ---------------------------------------------------------------- GP: the contract


def test_gp_suggestions_lie_in_the_space() -> None:
    for p in drive(gp(), 14, loss, batch=2):
        assert -5 <= p["x"] <= 10 and 1e-4 <= p["lr"] <= 1e-1
        assert 16 <= p["batch"] <= 128 and p["batch"] % 16 == 0
        assert 8 <= p["width"] <= 512 and p["width"] % 8 == 0
        assert type(p["layers"]) is int and 1 <= p["layers"] <= 4
        assert p["momentum"] in (0.9, 0.5, 0.99)


def test_gp_same_seed_same_suggestions() -> None:
    assert drive(gp(seed=5), 12, loss, batch=3) == drive(gp(seed=5), 12, loss, batch=3)
    assert drive(gp(seed=5), 8, loss) != drive(gp(seed=6), 8, loss)


def test_gp_rebuilt_from_history_continues_as_the_uninterrupted_one() -> None:
    assert_rebuilt_continues(gp, loss, 8)


def test_gp_pending_suggestions_differ_and_spread_out() -> None:
    space = {"x": {"_type": "uniform", "_value": [0.0, 1.0]}, "y": {"_type": "uniform", "_value": [0.0, 1.0]}}
    tuner = gp(space=space)
    for pid in range(10):
        p = tuner.generate_parameters(pid)
        tuner.receive_trial_result(pid, p, (p["x"] - 0.3) ** 2 + (p["y"] - 0.6) ** 2)
    batch = np.array([[p["x"], p["y"]] for p in (tuner.generate_parameters(100 + i) for i in range(6))])
    distances = np.linalg.norm(batch[:, None] - batch[None], axis=-1)[np.triu_indices(6, 1)]
    assert distances.min() > 1e-5  # distinct points (the believer lets them sit close to a good one)


def test_gp_never_repeats_in_a_finite_space_until_exhausted() -> None:
    assert_never_repeats_until_exhausted(gp(space=FINITE_SPACE, cold_start_num=2))


# ---------------------------------------------------------------- GP: behaviour and configuration


def test_gp_finds_branins_minimum_better_than_random() -> None:
    gp_regret = branin_regret("GP", {"optimize_mode": "minimize", "seed": 1, **FAST_GP}, 25)
    assert gp_regret < 0.05
    assert gp_regret < branin_regret("Random", {"seed": 1}, 25)


@pytest.mark.parametrize("utility", ["ei", "ucb", "poi"])
def test_gp_maximize_goes_up(utility: str) -> None:
    space = {"x": {"_type": "uniform", "_value": [0.0, 1.0]}}
    tuner = create_tuner("GP", {"optimize_mode": "maximize", "seed": 0, "utility": utility, **FAST_GP}, space)
    xs = []
    for pid in range(12):
        p = tuner.generate_parameters(pid)
        tuner.receive_trial_result(pid, p, -((p["x"] - 0.8) ** 2))
        xs.append(p["x"])
    assert abs(xs[-1] - 0.8) < 0.1


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"x": {"_type": "normal", "_value": [0, 1]}}, "parameter 'x' is type 'normal'; GP supports choice"),
        ({"k": {"_type": "choice", "_value": ["a", "b"]}}, "'k': GP takes a choice of numbers only"),
        ({"o": {"_type": "choice", "_value": [{"_name": "a"}, {"_name": "b"}]}}, "'o' is a nested choice"),
    ],
)
def test_gp_refuses_search_space_types_nni_refuses(space: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match="tuner 'GP'") as caught:
        create_tuner("GP", {}, space)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"utility": "pi"}, "classArgs.utility must be one of ['ei', 'ucb', 'poi']"),
        ({"nu": 2.0}, "classArgs.nu must be one of [0.5, 1.5, 2.5]"),
        ({"kappa": -1}, "classArgs.kappa must be between 0"),
        ({"alpha": 0}, "classArgs.alpha must be between"),
        ({"cold_start_num": 1.5}, "classArgs.cold_start_num must be an integer"),
        ({"selection_num_warm_up": 0}, "classArgs.selection_num_warm_up must be >= 1"),
        ({"optimize_mode": "max"}, "classArgs.optimize_mode must be 'maximize' or 'minimize'"),
        ({"n_startup_jobs": 3}, "classArgs.n_startup_jobs is not a known argument"),
    ],
)
def test_gp_class_args_are_checked(args: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match="tuner 'GP'") as caught:
        create_tuner("GP", args, GP_SPACE)
    assert message in str(caught.value)


def test_gp_takes_nnis_alias_and_every_documented_argument() -> None:
    args = {"optimize_mode": "maximize", "utility": "ucb", "kappa": 2.0, "xi": 0.01, "nu": 1.5,
            "alpha": 1e-4, "cold_start_num": 3, "selection_num_warm_up": 500,
            "selection_num_starting_points": 5}
    tuner = create_tuner("GPTuner", args, {"x": {"_type": "uniform", "_value": [0, 1]}})
    assert tuner.name == "GP"
    drive_values = [tuner.generate_parameters(pid) for pid in range(2)]
    assert all(0 <= p["x"] <= 1 for p in drive_values)


# ---------------------------------------------------------------- Batch

BATCH_CONFIGS = [{"optimizer": "Adam", "lr": 0.001}, {"optimizer": "SGD", "lr": 0.01},
                 {"optimizer": "SGD", "lr": 0.1}]
BATCH_SPACE = {"combine_params": {"_type": "choice", "_value": BATCH_CONFIGS}}


def test_batch_runs_each_listed_configuration_once_in_order_then_ends() -> None:
    tuner = create_tuner("BatchTuner", None, BATCH_SPACE)
    assert tuner.generate_multiple_parameters(list(range(5))) == BATCH_CONFIGS
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(5)


def test_batch_repeated_id_gets_the_same_configuration_and_pending_ones_differ() -> None:
    tuner = create_tuner("Batch", {}, BATCH_SPACE)
    first, second = tuner.generate_parameters(0), tuner.generate_parameters(1)
    assert first != second
    assert tuner.generate_parameters(0) == first


def test_batch_rebuilt_from_history_skips_what_ran() -> None:
    tuner = create_tuner("Batch", None, BATCH_SPACE)
    # A restarted service imports every recorded trial, running ones (no value) included.
    assert tuner.import_data([{"parameter": BATCH_CONFIGS[1], "value": None},
                              {"parameter": BATCH_CONFIGS[0], "value": 0.5}]) == 2
    assert tuner.generate_parameters(7) == BATCH_CONFIGS[2]
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(8)


def test_batch_configuration_listed_twice_runs_twice() -> None:
    tuner = create_tuner("Batch", None, {"c": {"_type": "choice", "_value": [{"a": 1}, {"a": 1}]}})
    tuner.import_data([{"parameter": {"a": 1}, "value": 1.0}])
    assert tuner.generate_parameters(0) == {"a": 1}
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(1)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"a": {"_type": "choice", "_value": [{"x": 1}]}, "b": {"_type": "choice", "_value": [1]}},
         "got 2 parameters"),
        ({"a": {"_type": "uniform", "_value": [0, 1]}}, "'a' is of type 'uniform'"),
        ({"a": {"_type": "choice", "_value": [{"x": 1}, 3]}}, "option 1 of 'a' is not an object"),
        ({"a": {"_type": "choice", "_value": []}}, "needs a non-empty list"),
    ],
)
def test_batch_refuses_other_search_spaces(space: dict[str, Any], message: str) -> None:
    refusal = "tuner 'Batch': the search space must be one 'choice'"
    with pytest.raises(TunerConfigError, match=refusal) as caught:
        create_tuner("Batch", None, space)
    assert message in str(caught.value)


def test_batch_takes_no_class_args() -> None:
    with pytest.raises(TunerConfigError, match="tuner 'Batch': takes no classArgs, got optimize_mode"):
        create_tuner("Batch", {"optimize_mode": "maximize"}, BATCH_SPACE)


def test_gp_fits_on_the_best_and_latest_trials_only_past_its_cap() -> None:
    from services.tuner.algorithms.gp import MODEL_POINTS

    tuner = gp(space={"x": {"_type": "uniform", "_value": [0.0, 1.0]}})
    records = [{"parameter": {"x": i / 1000}, "value": float(i % 97)} for i in range(MODEL_POINTS + 50)]
    tuner.import_data(records)
    kept = tuner._model_history()
    assert len(kept) == MODEL_POINTS
    losses = sorted(o.loss for o in tuner.history)
    assert all(o in kept for o in tuner.history if o.loss < losses[MODEL_POINTS * 2 // 3 - 1])
    assert tuner.history[-1] in kept  # the latest trial is always in the model
    assert 0.0 <= tuner.generate_parameters(10_000)["x"] <= 1.0


# ---------------------------------------------------------------- the Gaussian process itself


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_gp_gradients_match_finite_differences(nu: float) -> None:
    from services.tuner.algorithms.gaussian_process import GaussianProcess

    rng = np.random.default_rng(0)
    x = rng.random((25, 3))
    model = GaussianProcess(nu).fit(x, np.sin(5 * x[:, 0]) + x[:, 1] * x[:, 2])
    points = rng.random((5, 3))
    mean, std, dmean, dstd = model.predict_with_gradient(points)
    assert np.allclose((mean, std), model.predict(points))
    step = 1e-6
    for j in range(3):
        shift = np.zeros(3)
        shift[j] = step
        (m_up, s_up), (m_down, s_down) = model.predict(points + shift), model.predict(points - shift)
        assert np.allclose(dmean[:, j], (m_up - m_down) / (2 * step), atol=1e-4)
        assert np.allclose(dstd[:, j], (s_up - s_down) / (2 * step), atol=1e-4)


def test_gp_leave_one_out_predicts_each_point_from_the_others() -> None:
    from services.tuner.algorithms.gaussian_process import GaussianProcess

    rng = np.random.default_rng(1)
    x = rng.random((15, 2))
    y = np.sin(5 * x[:, 0]) + x[:, 1]
    model = GaussianProcess(2.5).fit(x, y)
    mean, std = model.leave_one_out()
    for i in (0, 7):  # the same hyperparameters, fitted without point i
        others = np.delete(np.arange(15), i)
        without = GaussianProcess(2.5)
        without._x, without._y = x[others], y[others]
        without._y_mean, without._y_std = model._y_mean, model._y_std
        assert model._fit is not None
        theta = np.append(model._fit.log_lengths, model._fit.log_signal)
        without._fit = without._factor(theta, (y[others] - model._y_mean) / model._y_std)
        m, s = without.predict(x[i:i + 1])
        assert mean[i] == pytest.approx(m[0], rel=1e-4)
        noise = (model.noise + model._fit.jitter) * model._y_std**2  # the left-out point's own noise
        assert std[i] ** 2 == pytest.approx(s[0] ** 2 + noise, rel=1e-3)


@pytest.mark.parametrize("utility", ["ei", "ucb", "poi"])
def test_gp_utility_gradient_matches_finite_differences_and_log_ei_never_underflows(utility: str) -> None:
    space = {"x": {"_type": "uniform", "_value": [0.0, 1.0]}, "y": {"_type": "uniform", "_value": [0.0, 1.0]}}
    tuner = gp(space=space, utility=utility)
    for pid in range(8):
        p = tuner.generate_parameters(pid)
        tuner.receive_trial_result(pid, p, (p["x"] - 0.3) ** 2 + (p["y"] - 0.6) ** 2)
    model = tuner._model()
    points = np.random.default_rng(0).random((6, 2))
    value, gradient = tuner._utility_with_gradient(model, points)
    assert np.allclose(value, tuner._utility(model, points))
    step = 1e-6
    for j in range(2):
        shift = np.zeros(2)
        shift[j] = step
        numeric = (tuner._utility(model, points + shift) - tuner._utility(model, points - shift)) / (2 * step)
        assert np.allclose(gradient[:, j], numeric, rtol=1e-3, atol=1e-5)
    if utility == "ei":  # log EI: finite and ordered even where EI itself is 0 in floating point
        from services.tuner.algorithms.gp import _log_h

        z = np.array([-200.0, -40.0, -9.0, -8.0, -3.0, 0.0, 4.0])
        assert np.all(np.isfinite(_log_h(z))) and np.all(np.diff(_log_h(z)) > 0)
