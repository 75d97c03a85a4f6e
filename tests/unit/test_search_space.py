"""NNI search spaces: validation errors name the parameter; sampling follows NNI's exact semantics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from shared.search_space import (
    SearchSpaceError,
    build_parameters,
    flatten_search_space,
    parse_parameters,
    quantize,
    sample_parameters,
    sample_value,
    validate_search_space,
)

SAMPLES = 4000


def draws(spec: dict[str, Any], n: int = SAMPLES, seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [sample_value(spec, rng) for _ in range(n)]


def is_multiple(x: float, q: float) -> bool:
    return math.isclose(x / q, round(x / q), abs_tol=1e-9)


# ---------------------------------------------------------------- sampling, type by type


def test_choice_returns_the_options_themselves_all_of_them() -> None:
    options = [16, "relu", 0.5, True]
    values = draws({"_type": "choice", "_value": options})
    assert {repr(v) for v in values} == {repr(o) for o in options}


def test_randint_is_an_int_in_low_inclusive_high_exclusive() -> None:
    values = draws({"_type": "randint", "_value": [-2, 3]})
    assert all(type(v) is int for v in values)
    assert set(values) == {-2, -1, 0, 1, 2}


def test_uniform_covers_its_range() -> None:
    values = np.array(draws({"_type": "uniform", "_value": [-1.5, 2.5]}))
    assert values.min() >= -1.5 and values.max() <= 2.5
    assert abs(values.mean() - 0.5) < 0.1


def test_quniform_rounds_to_q_then_clips() -> None:
    values = draws({"_type": "quniform", "_value": [1, 10, 3]})
    # round(x / 3) * 3 for x in [1, 10] gives 0, 3, 6, 9; clipping maps 0 -> 1; 10 is unreachable.
    assert set(values) == {1.0, 3.0, 6.0, 9.0}


def test_quniform_with_bounds_on_the_grid_hits_both_ends() -> None:
    values = draws({"_type": "quniform", "_value": [50, 1000, 50]})
    assert all(is_multiple(v, 50) and 50 <= v <= 1000 for v in values)
    assert {50.0, 1000.0} <= set(values)


def test_loguniform_is_uniform_in_log_space() -> None:
    values = np.array(draws({"_type": "loguniform", "_value": [1e-4, 1.0]}))
    assert values.min() >= 1e-4 and values.max() <= 1.0
    logs = np.log10(values)
    assert abs(np.mean(logs < -2) - 0.5) < 0.05  # half the mass below the geometric middle


def test_qloguniform_rounds_on_the_value_and_clips() -> None:
    values = draws({"_type": "qloguniform", "_value": [1, 1000, 10]})
    assert all(1 <= v <= 1000 for v in values)
    assert all(is_multiple(v, 10) or v == 1 for v in values)
    assert 1.0 in values  # values below 5 round to 0 and clip to low


def test_normal_has_its_mean_and_sigma() -> None:
    values = np.array(draws({"_type": "normal", "_value": [3.0, 2.0]}))
    assert abs(values.mean() - 3.0) < 0.1 and abs(values.std() - 2.0) < 0.1


def test_qnormal_rounds_without_clipping() -> None:
    values = np.array(draws({"_type": "qnormal", "_value": [0.0, 5.0, 2.0]}))
    assert all(is_multiple(v, 2.0) for v in values)
    assert values.min() < -6 and values.max() > 6  # not clipped to anything


def test_lognormal_is_normal_in_log_space() -> None:
    values = np.array(draws({"_type": "lognormal", "_value": [1.0, 0.5]}))
    assert values.min() > 0
    assert abs(np.log(values).mean() - 1.0) < 0.05 and abs(np.log(values).std() - 0.5) < 0.05


def test_qlognormal_rounds_the_value_and_can_reach_zero() -> None:
    values = draws({"_type": "qlognormal", "_value": [0.0, 1.0, 1.0]})
    assert all(is_multiple(v, 1.0) and v >= 0 for v in values)
    assert 0.0 in values


def test_quantize_matches_nni_rounding() -> None:
    assert quantize(7.4, 5) == 5.0
    assert quantize(12.5, 5) == 10.0  # Python's round: half to even, as NNI
    assert quantize(0.2, 5, 1, 10) == 1.0
    assert quantize(11.0, 5, 1, 10) == 10.0


# ---------------------------------------------------------------- nested choices and round trips

NESTED = {
    "optimizer": {
        "_type": "choice",
        "_value": [
            {
                "_name": "sgd",
                "lr": {"_type": "loguniform", "_value": [1e-3, 1.0]},
                "momentum": {"_type": "uniform", "_value": [0, 1]},
            },
            {"_name": "adam", "lr": {"_type": "loguniform", "_value": [1e-5, 1e-2]}},
            {"_name": "none"},
        ],
    },
    "layers": {"_type": "randint", "_value": [1, 4]},
}


def test_nested_choice_gives_name_and_only_that_options_parameters() -> None:
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        params = sample_parameters(NESTED, rng)
        optimizer = params["optimizer"]
        seen.add(optimizer["_name"])
        expected_keys = {"sgd": {"_name", "lr", "momentum"}, "adam": {"_name", "lr"}, "none": {"_name"}}
        assert set(optimizer) == expected_keys[optimizer["_name"]]
        if optimizer["_name"] == "adam":
            assert 1e-5 <= optimizer["lr"] <= 1e-2
        assert params["layers"] in (1, 2, 3)
    assert seen == {"sgd", "adam", "none"}


def test_parameters_round_trip_through_internal_values() -> None:
    specs = flatten_search_space(NESTED)
    rng = np.random.default_rng(2)
    for _ in range(50):
        params = sample_parameters(specs, rng)
        assert build_parameters(specs, parse_parameters(specs, params)) == params


def test_flat_names_are_slash_joined_paths() -> None:
    names = [spec.name for spec in flatten_search_space(NESTED)]
    assert names == ["optimizer", "optimizer/lr", "optimizer/momentum", "optimizer/lr", "layers"]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("spec", "reason_part"),
    [
        ({"_type": "uniform", "_value": [0.1, 0.01]}, "low (0.1) must be < high (0.01)"),
        ({"_type": "randint", "_value": [5, 5]}, "low (5) must be < high (5)"),
        ({"_type": "randint", "_value": [0.5, 3]}, "integers"),
        ({"_type": "loguniform", "_value": [0, 1]}, "must be > 0"),
        ({"_type": "qloguniform", "_value": [-1, 10, 1]}, "must be > 0"),
        ({"_type": "quniform", "_value": [0, 10, 0]}, "q (0) must be > 0"),
        ({"_type": "quniform", "_value": [0, 10]}, "needs [low, high, q]"),
        ({"_type": "normal", "_value": [0, -1]}, "sigma (-1) must be > 0"),
        ({"_type": "qnormal", "_value": [0, 1]}, "needs [mu, sigma, q]"),
        ({"_type": "lognormal", "_value": [0, 0]}, "sigma (0) must be > 0"),
        ({"_type": "qlognormal", "_value": [0, 1, -2]}, "q (-2) must be > 0"),
        ({"_type": "uniform", "_value": ["a", 1]}, "finite number"),
        ({"_type": "uniform", "_value": [0, float("inf")]}, "finite number"),
        ({"_type": "choice", "_value": []}, "at least one option"),
        ({"_type": "choice", "_value": "abc"}, "must be a list"),
        ({"_type": "gaussian", "_value": [0, 1]}, "unknown _type 'gaussian'"),
        ({"_value": [0, 1]}, "'_type' and '_value'"),
        ([0, 1], "must be an object"),
    ],
)
def test_invalid_parameter_is_named_with_the_reason(spec: Any, reason_part: str) -> None:
    with pytest.raises(SearchSpaceError) as caught:
        validate_search_space({"lr": spec})
    assert caught.value.parameter == "lr"
    assert reason_part in caught.value.reason
    assert str(caught.value).startswith("search space parameter 'lr': ")


def test_error_inside_a_nested_choice_names_the_path() -> None:
    space = {
        "optimizer": {
            "_type": "choice",
            "_value": [{"_name": "sgd", "lr": {"_type": "uniform", "_value": [0.1, 0.01]}}],
        }
    }
    with pytest.raises(SearchSpaceError) as caught:
        validate_search_space(space)
    assert str(caught.value) == "search space parameter 'optimizer/lr': low (0.1) must be < high (0.01)"
    assert caught.value.parameter == "optimizer/lr"


def test_nested_choice_needs_name_in_every_option() -> None:
    space = {"opt": {"_type": "choice", "_value": [{"_name": "a"}, {"b": 1}]}}
    with pytest.raises(SearchSpaceError, match=r"'opt'.*_name"):
        validate_search_space(space)


def test_search_space_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_search_space({})


def test_valid_space_of_every_type_passes() -> None:
    validate_search_space(
        {
            "a": {"_type": "choice", "_value": [1, "x", 2.5]},
            "b": {"_type": "randint", "_value": [0, 10]},
            "c": {"_type": "uniform", "_value": [0, 1]},
            "d": {"_type": "quniform", "_value": [0, 10, 2]},
            "e": {"_type": "loguniform", "_value": [1e-5, 1]},
            "f": {"_type": "qloguniform", "_value": [1, 100, 1]},
            "g": {"_type": "normal", "_value": [0, 1]},
            "h": {"_type": "qnormal", "_value": [0, 1, 0.1]},
            "i": {"_type": "lognormal", "_value": [0, 1]},
            "j": {"_type": "qlognormal", "_value": [0, 1, 1]},
            **NESTED,
        }
    )
