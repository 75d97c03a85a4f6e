"""shared.algorithms is the one registry: names, aliases, classArgs schemas and their defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from services.tuner.algorithms import BUILDERS as TUNER_BUILDERS
from services.tuner.algorithms import TunerConfigError, create_tuner
from services.tuner.algorithms.bohb import BohbSettings
from services.tuner.algorithms.dngo import DngoSettings
from services.tuner.algorithms.gp import GpSettings
from services.tuner.algorithms.metis import MetisSettings
from services.tuner.algorithms.pbt import PbtSettings
from services.tuner.algorithms.tpe import TpeSettings
from services.tuner.assessors import BUILDERS as ASSESSOR_BUILDERS
from shared import algorithms
from shared.algorithms import ClassArgsError, find, read_class_args
from shared.config import parse_experiment_config
from shared.errors import ConfigError

UNIFORM = {"_type": "uniform", "_value": [0, 1]}
README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_registered_algorithm_has_a_builder_and_no_builder_is_unregistered() -> None:
    assert set(TUNER_BUILDERS) == set(algorithms.TUNERS)
    assert set(ASSESSOR_BUILDERS) == set(algorithms.ASSESSORS)


@pytest.mark.parametrize(("settings", "defaults"), [
    (TpeSettings, read_class_args(algorithms.TUNERS["TPE"], {})["tpe_args"]),
    (GpSettings, read_class_args(algorithms.TUNERS["GP"], {})),
    (MetisSettings, read_class_args(algorithms.TUNERS["Metis"], {})),
    (DngoSettings, read_class_args(algorithms.TUNERS["DNGO"], {})),
    (BohbSettings, read_class_args(algorithms.TUNERS["BOHB"], {"optimize_mode": "maximize"})),
    (PbtSettings, read_class_args(algorithms.TUNERS["PBT"], {"optimize_mode": "maximize"})),
])
def test_the_registry_defaults_are_the_settings_defaults(settings: Any, defaults: dict[str, Any]) -> None:
    # The registry's defaults are what a config gets; a settings dataclass built without
    # arguments (tests, benchmarks) must not drift from them.
    fields = {field.name: field.default for field in dataclasses.fields(settings)}
    shared_keys = set(fields) & set(defaults)
    assert shared_keys, "the settings must take some of the classArgs"
    assert {key: fields[key] for key in shared_keys} == {key: defaults[key] for key in shared_keys}


@pytest.mark.parametrize("spelling", ["gp", "GPTuner", "gptuner", "GP"])
def test_names_and_aliases_match_in_any_case(spelling: str) -> None:
    assert find("tuner", spelling).name == "GP"
    config = _config({"name": spelling})
    assert config.tuner.name == "GP"


@pytest.mark.parametrize(("name", "expected"), [
    ("SMAC", "is not built into tunebus: it needs the smac package"),
    ("PPOTuner", "is not supported by tunebus yet"),
    ("Bogus", "tuner 'Bogus' is not supported (supported: TPE, Random"),
])
def test_the_config_refuses_other_names_saying_why(name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config({"name": name})
    assert expected in str(caught.value)


def test_read_class_args_fills_every_default_and_types_numbers() -> None:
    checked = read_class_args(algorithms.TUNERS["TPE"], {"tpe_args": {"gamma": 1}})
    assert checked["optimize_mode"] == "minimize" and checked["seed"] is None
    assert checked["tpe_args"]["gamma"] == 1.0 and isinstance(checked["tpe_args"]["gamma"], float)
    assert checked["tpe_args"]["n_startup_jobs"] == 10


def test_an_explicit_null_choice_is_a_value_but_a_null_mode_is_the_default() -> None:
    checked = read_class_args(algorithms.TUNERS["TPE"], {"optimize_mode": None,
                                                        "tpe_args": {"constant_liar_type": None}})
    assert checked["optimize_mode"] == "minimize"
    assert checked["tpe_args"]["constant_liar_type"] is None


@pytest.mark.parametrize(("name", "args", "message"), [
    ("Hyperband", {}, "tuner 'Hyperband': classArgs.optimize_mode is required ('maximize' or 'minimize')"),
    ("BOHB", {"optimize_mode": "maximize", "config_space": "x.pcs"}, "classArgs.config_space (a ConfigSpace"),
    ("Batch", {"seed": 1}, "tuner 'Batch': takes no classArgs, got seed"),
    ("TPE", {"tpe_args": {"gama": 0.2}}, "classArgs.tpe_args.gama is not a known argument"),
    ("TPE", {"tpe_args": [1]}, "classArgs.tpe_args must be an object, got list"),
    ("TPE", {"seed": 2**64}, "classArgs.seed must be <= 9223372036854775807"),
    ("TPE", [1, 2], "classArgs must be an object"),
    ("GP", {"kappa": float("inf")}, "classArgs.kappa must be a finite number"),
    ("PBT", {"optimize_mode": "maximize", "all_checkpoint_dir": " "}, "must be a non-blank string"),
])
def test_bad_class_args_name_the_algorithm_and_the_argument(name: str, args: Any, message: str) -> None:
    with pytest.raises(ClassArgsError) as caught:
        read_class_args(algorithms.TUNERS[name], args)
    assert message in str(caught.value)
    with pytest.raises(TunerConfigError) as built:  # the tuner service reports the same words
        create_tuner(name, args, None)
    assert message in str(built.value)


def test_the_readme_table_lists_each_algorithms_class_args() -> None:
    rows = re.findall(r"^\| `(\w+)`[^|]*\| ([^|]*) \|", README.read_text(), flags=re.MULTILINE)
    documented = {name: set(re.findall(r"`(\w+)`", args)) for name, args in rows if name in algorithms.TUNERS}
    assert {"GP", "Metis", "DNGO", "PBT", "Hyperband", "BOHB", "Batch"} <= set(documented)
    for name, args in documented.items():
        assert args == {arg.name for arg in algorithms.TUNERS[name].args}, name


def _config(tuner: dict[str, Any]) -> Any:
    return parse_experiment_config({
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py",
        "trialConcurrency": 1,
        "tuner": tuner,
        "trainingService": {"platform": "local"},
    })


def test_the_readme_table_lists_the_search_space_types_each_takes() -> None:
    rows = re.findall(r"^\| `(\w+)`[^|]*\|[^|]*\| ([^|]*) \|", README.read_text(), flags=re.MULTILINE)
    columns = {name: text for name, text in rows if name in algorithms.TUNERS}
    for name, algorithm in algorithms.TUNERS.items():
        if algorithm.space_types is None or name not in columns:
            continue
        text = columns[name]
        if text.startswith("as "):  # "as GP": the same rules as the algorithm named
            assert algorithms.TUNERS[text.split()[1]].space_types == algorithm.space_types, name
            continue
        assert tuple(re.findall(r"`(\w+)`", text)) == algorithm.space_types, name
        assert ("of numbers" in text) == algorithm.numeric_choices, name


@pytest.mark.parametrize(("name", "space", "message"), [
    ("GP", {"x": {"_type": "normal", "_value": [0, 1]}},
     "search space parameter 'x' is type 'normal'; GP supports choice, randint, uniform"),
    ("Metis", {"x": {"_type": "loguniform", "_value": [0.1, 1]}}, "'x' is type 'loguniform'; Metis supports"),
    ("DNGO", {"k": {"_type": "choice", "_value": ["a", "b"]}}, "'k': DNGO takes a choice of numbers only"),
    ("PBT", {"opt": {"_type": "choice", "_value": [{"_name": "sgd", "lr": UNIFORM}]}},
     "'opt' is a nested choice; PBT takes flat parameters only"),
])
def test_the_registry_search_space_rules_refuse_what_nni_refuses(name: str, space: Any, message: str) -> None:
    args = {"optimize_mode": "maximize"}
    with pytest.raises(TunerConfigError) as caught:
        create_tuner(name, args, space)
    assert message in str(caught.value)


def test_a_space_every_rule_allows_is_taken() -> None:
    space = {"x": {"_type": "uniform", "_value": [0, 1]}, "k": {"_type": "choice", "_value": [1, 2]}}
    batch = {"config": {"_type": "choice", "_value": [{"x": 0.1}, {"x": 0.7}]}}
    for name, algorithm in algorithms.TUNERS.items():
        taken = batch if algorithm.batch_space else space
        assert algorithms.search_space_problem(algorithm, taken) is None, name
    problem = algorithms.search_space_problem(algorithms.TUNERS["Batch"], space) or ""
    assert "must be one 'choice' parameter" in problem and "got 2 parameters" in problem


@pytest.mark.parametrize(("name", "parameter"), [
    ("Hyperband", "TRIAL_BUDGET"), ("BOHB", "TRIAL_BUDGET"), ("PBT", "load_checkpoint_dir"),
    ("PBT", "save_checkpoint_dir"),
])
def test_parameters_an_algorithm_sets_itself_are_refused_in_the_space(name: str, parameter: str) -> None:
    space = {parameter: UNIFORM, "x": UNIFORM}
    problem = algorithms.search_space_problem(algorithms.TUNERS[name], space)
    assert problem is not None and f"may not have a parameter named {parameter}" in problem


@pytest.mark.parametrize(("role", "name", "args", "message"), [
    ("tuner", "BOHB", {"optimize_mode": "maximize", "min_budget": 3, "max_budget": 3},
     "classArgs.max_budget (3) must be larger than min_budget (3)"),
    ("assessor", "Curvefitting", {"epoch_num": 5, "start_step": 6},
     "classArgs.start_step must be <= epoch_num (5), got 6"),
])
def test_related_class_args_are_checked_together(role: Any, name: str, args: Any, message: str) -> None:
    with pytest.raises(ClassArgsError, match=re.escape(message)):
        read_class_args(find(role, name), args)
