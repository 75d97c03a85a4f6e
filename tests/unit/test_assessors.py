"""Assessors: stop a clearly losing trial, keep a winning one, with NNI's rules and classArgs."""

from __future__ import annotations

import math
from typing import Any

import pytest

from services.tuner.assessors import AssessorConfigError, AssessResult, create_assessor
from services.tuner.assessors.curvefitting import predict_final


def curve(final: float, steps: int, rate: float = 0.3) -> list[float]:
    """A saturating learning curve (accuracy-like) approaching ``final``."""
    return [final * (1 - math.exp(-rate * t)) for t in range(1, steps + 1)]


def run_trial(assessor: Any, trial_id: str, history: list[float], success: bool = True) -> list[AssessResult]:
    """Feed a trial's results one step at a time, as the service does, then end it."""
    verdicts = [assessor.assess_trial(trial_id, history[:step]) for step in range(1, len(history) + 1)]
    assessor.trial_end(trial_id, success)
    return verdicts


# ---------------------------------------------------------------- Medianstop


def test_medianstop_stops_a_losing_trial_and_keeps_a_winning_one() -> None:
    assessor = create_assessor("Medianstop", {"optimize_mode": "maximize", "start_step": 3})
    for i, final in enumerate((0.80, 0.82, 0.85)):
        run_trial(assessor, f"done{i}", curve(final, 10))
    losing = [assessor.assess_trial("loser", curve(0.3, step)) for step in range(1, 6)]
    winning = [assessor.assess_trial("winner", curve(0.95, step)) for step in range(1, 6)]
    assert losing[:2] == [AssessResult.Good, AssessResult.Good]  # before start_step
    assert losing[2:] == [AssessResult.Bad] * 3
    assert winning == [AssessResult.Good] * 5


def test_medianstop_compares_best_so_far_with_median_of_running_averages() -> None:
    assessor = create_assessor("Medianstop", {"optimize_mode": "maximize"})
    run_trial(assessor, "a", [1.0, 0.0, 0.0])  # running averages 1, 0.5, 0.333
    run_trial(assessor, "b", [0.0, 0.0, 0.9])  # running averages 0, 0, 0.3
    # step 3: median (lower, as NNI) of [0.3, 0.333] is 0.3; best-so-far 0.31 is not worse.
    assert assessor.assess_trial("c", [0.1, 0.31, 0.0]) is AssessResult.Good
    assert assessor.assess_trial("d", [0.1, 0.2, 0.29]) is AssessResult.Bad


def test_medianstop_minimize_and_only_successful_trials_count() -> None:
    assessor = create_assessor("Medianstop", {"optimize_mode": "minimize", "start_step": 1})
    run_trial(assessor, "failed", [0.01, 0.01], success=False)
    assert assessor.assess_trial("x", [5.0]) is AssessResult.Good  # no completed reference yet
    run_trial(assessor, "ok1", [1.0, 0.5])
    run_trial(assessor, "ok2", [2.0, 1.0])
    assert assessor.assess_trial("x", [5.0, 4.0]) is AssessResult.Bad
    assert assessor.assess_trial("y", [5.0, 0.4]) is AssessResult.Good
    assert assessor.assess_trial("z", [1.0, 1.0, 1.0]) is AssessResult.Good  # no trial reached step 3


def test_medianstop_reads_dict_metrics() -> None:
    assessor = create_assessor("Medianstop", {})
    run_trial(assessor, "a", [{"default": 0.9}, {"default": 0.9}])
    assert assessor.assess_trial("b", [{"default": 0.1, "loss": 3}, {"default": 0.1}]) is AssessResult.Bad


# ---------------------------------------------------------------- Curvefitting


def test_curve_prediction_extrapolates_a_saturating_curve() -> None:
    history = curve(0.9, 8)
    predicted = predict_final(history, 30)
    assert predicted is not None
    assert abs(predicted - curve(0.9, 30)[-1]) < 0.03


def test_curvefitting_stops_a_losing_curve_and_keeps_a_winning_one() -> None:
    assessor = create_assessor("Curvefitting", {"epoch_num": 20, "start_step": 5, "threshold": 0.95})
    run_trial(assessor, "reference", curve(0.9, 20))
    losing = run_trial(assessor, "loser", curve(0.5, 8), success=False)
    winning = run_trial(assessor, "winner", curve(0.93, 8))
    assert losing[:4] == [AssessResult.Good] * 4  # before start_step
    assert AssessResult.Bad in losing[4:]
    assert winning == [AssessResult.Good] * 8


def test_curvefitting_waits_for_a_completed_trial_and_respects_gap() -> None:
    assessor = create_assessor("Curvefitting", {"epoch_num": 20, "start_step": 4, "gap": 3})
    assert run_trial(assessor, "first", curve(0.2, 10), success=False) == [AssessResult.Good] * 10
    run_trial(assessor, "reference", curve(0.9, 20))
    verdicts = [assessor.assess_trial("loser", curve(0.3, step)) for step in range(1, 11)]
    judged = [step for step, v in enumerate(verdicts, start=1) if v is AssessResult.Bad]
    assert judged and all((step - 4) % 3 == 0 for step in judged)  # judged at steps 4, 7, 10 only


def test_curvefitting_minimize_stops_a_loss_that_stays_high() -> None:
    assessor = create_assessor(
        "Curvefitting", {"epoch_num": 20, "start_step": 5, "optimize_mode": "minimize"}
    )
    run_trial(assessor, "reference", [1.0 + 2 * math.exp(-0.3 * t) for t in range(1, 21)])
    losing = [3.0 + 2 * math.exp(-0.3 * t) for t in range(1, 9)]
    assert assessor.assess_trial("loser", losing) is AssessResult.Bad
    winning = [0.5 + 2 * math.exp(-0.3 * t) for t in range(1, 9)]
    assert assessor.assess_trial("winner", winning) is AssessResult.Good


def test_curvefitting_keeps_a_trial_whose_curve_cannot_be_fitted() -> None:
    assessor = create_assessor("Curvefitting", {"epoch_num": 20, "start_step": 3})
    run_trial(assessor, "reference", curve(0.9, 20))
    assert assessor.assess_trial("nan", [0.1, float("nan"), 0.2]) is AssessResult.Good


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("Medianstop", {"optimize_mode": "max"}, "assessor 'Medianstop': classArgs.optimize_mode must be"),
        ("Medianstop", {"start_step": -1}, "assessor 'Medianstop': classArgs.start_step must be >= 0"),
        ("Medianstop", {"start": 3}, "classArgs.start is not a known argument"),
        ("Curvefitting", {"threshold": 1.5}, "assessor 'Curvefitting': classArgs.threshold must be between"),
        ("Curvefitting", {"epoch_num": "20"}, "classArgs.epoch_num must be an integer"),
        ("Curvefitting", {"epoch_num": 5, "start_step": 6}, "classArgs.start_step must be <= epoch_num"),
        ("Curvefitting", {"gap": 0}, "classArgs.gap must be >= 1"),
        ("Hyperband", {}, "assessor 'Hyperband': unknown assessor"),
    ],
)
def test_bad_configuration_names_assessor_and_argument(name: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(AssessorConfigError) as caught:
        create_assessor(name, args)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)
