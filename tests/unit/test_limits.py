"""Caps on every number a user gives (shared.limits): config, classArgs, search space, update.

Each cap is tested at the limit (accepted) and just past it (refused, naming the field and the
limit), so that a cap that moved or vanished shows up here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.tuner.algorithms import TunerConfigError, create_tuner
from services.tuner.assessors import AssessorConfigError, create_assessor
from shared import limits
from shared.bus import PermanentError, parse_message
from shared.config import parse_duration, parse_experiment_config
from shared.errors import ConfigError
from shared.messages import ExperimentUpdate
from shared.search_space import SearchSpaceError, validate_search_space
from tests.unit.test_cli import VALID, unreachable, write_config  # noqa: F401 (a fixture)
from tests.unit.test_config import local_config
from tunebus import cli

DAY = 86400.0
HUGE = 10**400  # an int NNI's API and YAML both take; float() overflows on it


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_experiment_config(data)
    return info.value.errors


# ---------------------------------------------------------------- the experiment file


@pytest.mark.parametrize(
    ("key", "limit"),
    [("trialConcurrency", limits.MAX_TRIAL_CONCURRENCY), ("maxTrialNumber", limits.MAX_TRIAL_NUMBER)],
)
def test_trial_counts_are_capped_naming_field_and_limit(key: str, limit: int) -> None:
    assert getattr(parse_experiment_config(local_config(**{key: limit})), _snake(key)) == limit
    for value in (limit + 1, 1_000_000_000_000, HUGE):
        [(field, reason)] = problems(local_config(**{key: value}))
        assert field == key and str(limit) in reason, reason
        assert len(reason) < 200, "a 400-digit number is cut in the message"


def test_gpu_numbers_are_capped() -> None:
    service = {"platform": "local", "useActiveGpu": False}
    ok = local_config(trialGpuNumber=limits.MAX_TRIAL_GPU_NUMBER,
                      trainingService={**service, "maxTrialNumberPerGpu": limits.MAX_TRIAL_NUMBER_PER_GPU})
    assert parse_experiment_config(ok).trial_gpu_number == limits.MAX_TRIAL_GPU_NUMBER
    [(field, reason)] = problems(local_config(trialGpuNumber=limits.MAX_TRIAL_GPU_NUMBER + 1,
                                              trainingService=service))
    assert field == "trialGpuNumber" and str(limits.MAX_TRIAL_GPU_NUMBER) in reason
    [(field, reason)] = problems(local_config(
        trialGpuNumber=1,
        trainingService={**service, "maxTrialNumberPerGpu": limits.MAX_TRIAL_NUMBER_PER_GPU + 1}))
    assert field == "trainingService.maxTrialNumberPerGpu" and str(limits.MAX_TRIAL_NUMBER_PER_GPU) in reason
    [(field, reason)] = problems(local_config(trainingService={"platform": "local", "gpuIndices": [0, 5000]}))
    assert field == "trainingService.gpuIndices" and str(limits.MAX_GPU_INDEX) in reason


@pytest.mark.parametrize("key", ["maxExperimentDuration", "maxTrialDuration"])
def test_durations_are_capped_at_365_days(key: str) -> None:
    assert getattr(parse_experiment_config(local_config(**{key: "365d"})), _snake(key)) == 365 * DAY
    for value in ("366d", "9000h", 365 * DAY + 1, HUGE, "1e400s"):
        [(field, reason)] = problems(local_config(**{key: value}))
        assert field == key and "365 days" in reason, (value, reason)


def test_parse_duration_refuses_an_int_past_float_range_without_overflow() -> None:
    with pytest.raises(ValueError, match="at most 365 days"):
        parse_duration(HUGE)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"tpe_args": {"n_startup_jobs": HUGE}}, "tpe_args.n_startup_jobs"),
        ({"weights": [1.0, float("inf")]}, "weights[1]"),
        ({"lr": float("nan")}, "lr"),
        ({"scale": 1e301}, "scale"),
    ],
)
def test_class_args_numbers_must_fit_64_bits_or_be_finite(args: dict[str, Any], path: str) -> None:
    # Checked for custom algorithms too: the file is refused before anything is published.
    custom = {"className": "my.Tuner", "codeDirectory": "/nowhere", "classArgs": args}
    for tuner in ({"name": "TPE", "classArgs": args}, custom):
        found = problems(local_config(tuner=tuner))
        assert ("tuner.classArgs", next(r for f, r in found if f == "tuner.classArgs")) in found
        reason = dict(found)["tuner.classArgs"]
        assert reason.startswith(f"{path}: ") and len(reason) < 200, reason
    assert parse_experiment_config(local_config(tuner={"name": "TPE", "classArgs": {"seed": 2**63 - 1}}))


def test_class_args_nesting_is_capped() -> None:
    deep: Any = 1
    for _ in range(limits.MAX_CLASS_ARG_DEPTH + 2):
        deep = [deep]
    reason = dict(problems(local_config(tuner={"name": "TPE", "classArgs": {"x": deep}})))["tuner.classArgs"]
    assert f"deeper than {limits.MAX_CLASS_ARG_DEPTH}" in reason


def test_create_with_a_huge_concurrency_exits_2_before_publishing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unreachable: dict[str, str],  # noqa: F811
) -> None:
    config = write_config(tmp_path, VALID.replace("trialConcurrency: 2", "trialConcurrency: 1000000000000"))
    assert cli.main(["create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "trialConcurrency: " in err and str(limits.MAX_TRIAL_CONCURRENCY) in err
    assert "cannot reach" not in err


# ---------------------------------------------------------------- built-in algorithms' classArgs

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}}


@pytest.mark.parametrize(
    ("name", "args", "argument", "limit"),
    [
        ("Evolution", {"population_size": limits.MAX_CLASS_ARG_POPULATION}, "population_size",
         limits.MAX_CLASS_ARG_POPULATION),
        ("TPE", {"tpe_args": {"n_ei_candidates": limits.MAX_CLASS_ARG_POPULATION}},
         "tpe_args.n_ei_candidates", limits.MAX_CLASS_ARG_POPULATION),
        ("TPE", {"tpe_args": {"n_startup_jobs": limits.MAX_CLASS_ARG_COUNT}}, "tpe_args.n_startup_jobs",
         limits.MAX_CLASS_ARG_COUNT),
        ("TPE", {"tpe_args": {"linear_forgetting": limits.MAX_CLASS_ARG_COUNT}},
         "tpe_args.linear_forgetting", limits.MAX_CLASS_ARG_COUNT),
        ("Random", {"seed": limits.MAX_CLASS_ARG_INT}, "seed", limits.MAX_CLASS_ARG_INT),
    ],
)
def test_builtin_tuner_integers_are_capped(
    name: str, args: dict[str, Any], argument: str, limit: int
) -> None:
    create_tuner(name, args, SPACE)  # at the limit: accepted
    over = _bump(args)
    with pytest.raises(TunerConfigError, match=rf"classArgs\.{argument} must be <= {limit}"):
        create_tuner(name, over, SPACE)


def test_builtin_tuner_floats_must_be_finite_and_bounded() -> None:
    with pytest.raises(TunerConfigError, match=r"prior_weight must be between 0 and 1e\+06"):
        create_tuner("TPE", {"tpe_args": {"prior_weight": 1e7}}, SPACE)
    for bad in (float("inf"), float("nan"), HUGE):
        with pytest.raises(TunerConfigError, match="prior_weight must be a finite number"):
            create_tuner("TPE", {"tpe_args": {"prior_weight": bad}}, SPACE)


@pytest.mark.parametrize("argument", ["start_step", "epoch_num", "gap"])
def test_assessor_integers_are_capped(argument: str) -> None:
    cap = limits.MAX_CLASS_ARG_COUNT
    create_assessor("Curvefitting", {"epoch_num": cap, argument: cap})
    with pytest.raises(AssessorConfigError, match=rf"classArgs\.{argument} must be <= {cap}"):
        create_assessor("Curvefitting", {"epoch_num": cap, argument: cap + 1} if argument != "epoch_num"
                        else {argument: cap + 1})
    with pytest.raises(AssessorConfigError, match=rf"classArgs\.{argument} must be <="):
        create_assessor("Curvefitting", {argument: HUGE})


def test_assessor_threshold_refuses_an_int_past_float_range() -> None:
    with pytest.raises(AssessorConfigError, match="threshold must be a finite number"):
        create_assessor("Curvefitting", {"threshold": HUGE})
    with pytest.raises(AssessorConfigError, match="start_step must be <="):
        create_assessor("Medianstop", {"start_step": HUGE})


# ---------------------------------------------------------------- search spaces


def space_error(space: Any) -> SearchSpaceError:
    with pytest.raises(SearchSpaceError) as info:
        validate_search_space(space)
    return info.value


def test_choice_options_are_capped() -> None:
    validate_search_space({"c": {"_type": "choice", "_value": list(range(limits.MAX_CHOICE_OPTIONS))}})
    error = space_error({"c": {"_type": "choice", "_value": list(range(limits.MAX_CHOICE_OPTIONS + 1))}})
    assert error.parameter == "c" and str(limits.MAX_CHOICE_OPTIONS) in error.reason


def test_parameter_count_is_capped() -> None:
    one = {"_type": "uniform", "_value": [0, 1]}
    validate_search_space({f"p{i}": one for i in range(limits.MAX_SEARCH_SPACE_PARAMETERS)})
    error = space_error({f"p{i}": one for i in range(limits.MAX_SEARCH_SPACE_PARAMETERS + 1)})
    assert str(limits.MAX_SEARCH_SPACE_PARAMETERS) in error.reason


def test_nesting_depth_is_capped() -> None:
    space: dict[str, Any] = {"leaf": {"_type": "uniform", "_value": [0, 1]}}
    for level in range(limits.MAX_SEARCH_SPACE_DEPTH + 2):
        space = {f"n{level}": {"_type": "choice", "_value": [{"_name": "a", **space}]}}
    assert "deeper than" in space_error(space).reason


@pytest.mark.parametrize(
    "spec",
    [
        {"_type": "uniform", "_value": [0, HUGE]},
        {"_type": "quniform", "_value": [0, 1, 1e301]},
        {"_type": "normal", "_value": [-HUGE, 1]},
        {"_type": "randint", "_value": [0, 2**53 + 1]},
        {"_type": "randint", "_value": [-HUGE, 0]},
    ],
)
def test_search_space_numbers_are_bounded(spec: dict[str, Any]) -> None:
    error = space_error({"p": spec})
    assert error.parameter == "p" and len(error.reason) < 200, error.reason


def test_a_wide_randint_is_accepted_and_tuned_without_listing_it() -> None:
    # 2**40 values: listing them (grid size, anneal's walk) would need terabytes.
    space = {"seed": {"_type": "randint", "_value": [0, 2**40]}}
    for name in ("TPE", "Random", "Anneal", "Evolution", "GridSearch"):
        tuner = create_tuner(name, {}, space)
        value = tuner.generate_parameters(0)["seed"]
        assert 0 <= value < 2**40


# ---------------------------------------------------------------- tunebus update and its message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trial_concurrency", limits.MAX_TRIAL_CONCURRENCY + 1),
        ("max_trial_number", limits.MAX_TRIAL_NUMBER + 1),
        ("max_experiment_duration", 366 * DAY),
    ],
)
def test_update_message_past_a_cap_is_refused_and_dead_lettered(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match="less than or equal"):
        ExperimentUpdate(experiment_id="e1", **{field: value})
    body = ExperimentUpdate(experiment_id="e1", trial_concurrency=1).model_dump_json().replace(
        '"trial_concurrency":1', f'"{field}":{value}')
    with pytest.raises(PermanentError, match=field):  # what the bus dead-letters, with this reason
        parse_message("experiment.update", body.encode())


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--concurrency", str(limits.MAX_TRIAL_CONCURRENCY + 1), f"--concurrency: must be between 1 and "
                                                                  f"{limits.MAX_TRIAL_CONCURRENCY}"),
        ("--max-trial-number", "1" + "0" * 400, f"--max-trial-number: must be between 1 and "
                                                 f"{limits.MAX_TRIAL_NUMBER}"),
        ("--max-experiment-duration", "366d",
         "--max-experiment-duration: a duration must be at most 365 days"),
    ],
)
def test_update_cli_refuses_values_past_the_caps_with_exit_2(
    capsys: pytest.CaptureFixture[str], unreachable: dict[str, str],  # noqa: F811
    flag: str, value: str, expected: str,
) -> None:
    assert cli.main(["update", "exp1", flag, value]) == 2
    err = capsys.readouterr().err
    assert expected in err and "cannot reach" not in err and len(err) < 300, err


# ---------------------------------------------------------------- helpers


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def _bump(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with its one (possibly nested) integer raised by one."""
    return {key: _bump(value) if isinstance(value, dict) else value + 1 for key, value in args.items()}
