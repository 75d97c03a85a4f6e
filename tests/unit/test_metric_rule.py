"""NNI's metric rule, shared by the ingestor, the tuners and the assessors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from services.tuner.algorithms import create_tuner
from services.tuner.assessors.result import scalar_history
from shared.metric_rule import InvalidMetric, metric_number
from shared.results_records import metric_value


@pytest.mark.parametrize("raw, number", [
    (3, 3.0), (0.25, 0.25), ({"default": 0.5, "loss": 2}, 0.5), ({"default": -7}, -7.0),
    (np.float32(0.5), 0.5), (np.int64(4), 4.0), ({"default": np.float64(1.5)}, 1.5),
])
def test_a_number_or_a_dicts_default_is_the_metric(raw: Any, number: float) -> None:
    assert metric_number(raw) == number
    assert isinstance(metric_number(raw), float)


@pytest.mark.parametrize("raw, words", [
    (True, "must be a number"), ("0.9", "must be a number"), (None, "must be a number"),
    ({"default": "0.9"}, "must be a number"), ({"accuracy": 0.9}, "needs a 'default' key"),
    (10 ** 400, "too large for a float (1329 bits)"), ({"default": [1]}, "must be a number"),
])
def test_anything_else_is_refused_naming_what_is_wrong(raw: Any, words: str) -> None:
    with pytest.raises(InvalidMetric, match=words.replace("(", r"\(").replace(")", r"\)")):
        metric_number(raw)


def test_each_reader_applies_its_own_policy_to_numbers_that_are_not_finite() -> None:
    assert math.isnan(metric_number(float("nan")))
    with pytest.raises(InvalidMetric, match="not finite"):  # the ingestor rejects the record
        metric_value(float("inf"))
    curve = scalar_history([1, {"default": float("nan")}])  # an assessor sees a diverged curve
    assert curve[0] == 1.0 and math.isnan(curve[1])
    space = {"x": {"_type": "uniform", "_value": [0, 1]}}
    tuner = create_tuner("TPE", {"optimize_mode": "maximize", "seed": 1}, space)
    params = tuner.generate_parameters(0)
    tuner.receive_trial_result(0, params, float("nan"))  # a tuner keeps it out of its model
    tuner.receive_trial_result(1, params, {"default": 0.5})
    assert len(tuner.history) == 1
