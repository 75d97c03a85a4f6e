"""The one registry of NNI's built-in algorithms: names, aliases, roles and classArgs schemas.

The config model checks names against it, ``tunebus create`` and the tuner service check classArgs
with :func:`read_class_args`, and the tuner service builds each algorithm from the values it
returns. Defaults and bounds are NNI's (``nni/algorithms/hpo``'s ClassArgsValidators), bounded
further where a value would only exhaust memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared import limits
from shared.checkpoints import AML_CHECKPOINTS_REFUSED, CHECKPOINT_KEYS
from shared.search_space import flatten_search_space

Role = Literal["tuner", "assessor"]
ArgKind = Literal["integer", "number", "flag", "text", "choice", "object"]

OPTIMIZE_MODES = ("maximize", "minimize")
LIAR_TYPES = ("worst", "mean", "best")
GP_UTILITIES = ("ei", "ucb", "poi")
MATERN_NUS = (0.5, 1.5, 2.5)
HYPERBAND_EXEC_MODES = ("parallelism", "serial")
GP_SPACE_TYPES = ("choice", "randint", "uniform", "quniform", "loguniform", "qloguniform")
METIS_SPACE_TYPES = ("choice", "randint", "uniform", "quniform")
#: Hyperband's first bracket starts about R configurations at once: R is bounded to keep that in memory.
MAX_HYPERBAND_R = 100_000
MAX_CHECKPOINT_DIR_CHARS = 1024
#: The parameter Hyperband and BOHB hand each trial its budget in (NNI's ``TRIAL_BUDGET``).
BUDGET_KEY = "TRIAL_BUDGET"


@dataclass(frozen=True)
class Arg:
    """One classArg: its NNI name, kind, default and bounds (``args``: an object's own)."""

    name: str
    kind: ArgKind
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    max_chars: int = 0
    args: tuple[Arg, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class Relation:
    """Two classArgs that must be ordered: ``arg`` ``op`` ``other`` (e.g. max_budget > min_budget)."""

    arg: str
    op: Literal[">", "<="]
    other: str


@dataclass(frozen=True)
class Algorithm:
    """A built-in tuner, advisor or assessor as NNI registers it."""

    name: str
    role: Role
    args: tuple[Arg, ...]
    aliases: tuple[str, ...] = ()
    advisor: bool = False
    """Hands budgets to trials and may wait for results (NNI's advisors): takes no assessor."""
    takes_class_args: bool = True
    refused_args: tuple[tuple[str, str], ...] = ()
    """NNI arguments tunebus refuses, with the reason."""
    space_types: tuple[str, ...] | None = None
    """The search-space types it takes (None: every one)."""
    flat_space: bool = False
    """Takes no nested choice."""
    numeric_choices: bool = False
    """A ``choice`` must list numbers."""
    batch_space: bool = False
    """The search space is one ``choice`` whose options are whole configurations (NNI's BatchTuner)."""
    reserved_parameters: tuple[str, ...] = ()
    """Parameter names the algorithm sets in each trial's parameters itself, so no search space may."""
    reserved_because: str = ""
    relations: tuple[Relation, ...] = ()


class ClassArgsError(ValueError):
    """A built-in algorithm's name or classArg is wrong; the message names both."""

    def __init__(self, role: Role, algorithm: str, reason: str, argument: str | None = None) -> None:
        where = f"classArgs.{argument} " if argument else ""
        super().__init__(f"{role} '{algorithm}': {where}{reason}")
        self.algorithm = algorithm
        self.argument = argument
        self.reason = reason


_Error = Callable[..., ClassArgsError]


def _mode(default: str | None) -> Arg:
    return Arg("optimize_mode", "choice", default, choices=OPTIMIZE_MODES, required=default is None)


def _count(name: str, default: int, low: int = 0, high: int = limits.MAX_CLASS_ARG_COUNT) -> Arg:
    return Arg(name, "integer", default, low=low, high=high)


def _fraction(name: str, default: float) -> Arg:
    return Arg(name, "number", default, low=0.0, high=1.0)


_SEED = Arg("seed", "integer", None, low=0)

_TUNERS = (
    Algorithm("TPE", "tuner", (_mode("minimize"), _SEED, Arg("tpe_args", "object", args=(
        Arg("constant_liar_type", "choice", "worst", choices=(*LIAR_TYPES, None)),
        _count("n_startup_jobs", 10),
        _count("n_ei_candidates", 64, low=1, high=limits.MAX_CLASS_ARG_POPULATION),
        _count("linear_forgetting", 25),
        Arg("prior_weight", "number", 1.0, low=0.0, high=limits.MAX_CLASS_ARG_WEIGHT),
        Arg("gamma", "number", 0.1, low=1e-6, high=1.0),
    )))),
    Algorithm("Random", "tuner", (_mode("maximize"), _SEED)),
    Algorithm("Anneal", "tuner", (_mode("minimize"), _SEED)),
    Algorithm("GridSearch", "tuner", (_mode("maximize"),)),
    Algorithm("Evolution", "tuner", (
        _mode("maximize"), _SEED,
        _count("population_size", 32, low=2, high=limits.MAX_CLASS_ARG_POPULATION))),
    Algorithm("Batch", "tuner", (), aliases=("BatchTuner",), takes_class_args=False, batch_space=True),
    Algorithm("GP", "tuner", (
        _mode("maximize"), _SEED,
        Arg("utility", "choice", "ei", choices=GP_UTILITIES),
        Arg("kappa", "number", 5.0, low=0.0, high=1e6),
        Arg("xi", "number", 0.0, low=0.0, high=1e6),
        Arg("nu", "choice", 2.5, choices=MATERN_NUS),
        Arg("alpha", "number", 1e-6, low=1e-12, high=1e3),
        _count("cold_start_num", 10),
        _count("selection_num_warm_up", 100_000, low=1, high=1_000_000),
        _count("selection_num_starting_points", 250, high=10_000),
    ), aliases=("GPTuner",), space_types=GP_SPACE_TYPES, flat_space=True, numeric_choices=True),
    Algorithm("Metis", "tuner", (
        _mode("maximize"), _SEED,
        Arg("no_resampling", "flag", True),
        Arg("no_candidates", "flag", False),
        _count("selection_num_starting_points", 600, low=1, high=100_000),
        _count("cold_start_num", 10),
        _fraction("exploration_probability", 0.9),
    ), aliases=("MetisTuner",), space_types=METIS_SPACE_TYPES, flat_space=True, numeric_choices=True),
    Algorithm("DNGO", "tuner", (
        _mode("maximize"), _SEED,
        _count("sample_size", 1000, low=1, high=100_000),
        _count("trials_per_update", 20, low=1, high=100_000),
        _count("num_epochs_per_training", 500, low=1, high=100_000),
    ), aliases=("DNGOTuner",), space_types=GP_SPACE_TYPES, flat_space=True, numeric_choices=True),
    Algorithm("Hyperband", "tuner", (
        _mode(None), _SEED,
        _count("R", 60, low=1, high=MAX_HYPERBAND_R),
        _count("eta", 3, low=2, high=MAX_HYPERBAND_R),
        Arg("exec_mode", "choice", "parallelism", choices=HYPERBAND_EXEC_MODES),
    ), advisor=True, reserved_parameters=(BUDGET_KEY,),
        reserved_because="Hyperband sets it to each trial's budget"),
    Algorithm("BOHB", "tuner", (
        _mode(None), _SEED,
        _count("min_budget", 1, low=1, high=9999),
        _count("max_budget", 3, low=1, high=9999),
        _count("eta", 3, low=2, high=9999),
        Arg("min_points_in_model", "integer", None, low=0, high=9999),
        _count("top_n_percent", 15, low=1, high=99),
        _count("num_samples", 64, low=1, high=9999),
        _fraction("random_fraction", 1 / 3),
        Arg("bandwidth_factor", "number", 3.0, low=1e-6, high=9999),
        Arg("min_bandwidth", "number", 1e-3, low=1e-6, high=1.0),
    ), advisor=True, flat_space=True, reserved_parameters=(BUDGET_KEY,),
        reserved_because="Hyperband sets it to each trial's budget",
        relations=(Relation("max_budget", ">", "min_budget"),), refused_args=(
        ("config_space", "(a ConfigSpace file) is not supported: give the search space in NNI's format"),)),
    Algorithm("PBT", "tuner", (
        _mode(None), _SEED,
        # NNI: a folder every trial reaches; None: tunebus keeps the checkpoints in storage
        Arg("all_checkpoint_dir", "text", None, max_chars=MAX_CHECKPOINT_DIR_CHARS),
        _count("population_size", 10, low=1, high=limits.MAX_CLASS_ARG_POPULATION),
        Arg("factor", "number", 0.2, low=0.0, high=1e6),
        _fraction("resample_probability", 0.25),
        _fraction("fraction", 0.2),
    ), aliases=("PBTTuner",), advisor=True, flat_space=True, reserved_parameters=CHECKPOINT_KEYS,
        reserved_because="PBT sets it to a checkpoint folder"),
)

_ASSESSORS = (
    Algorithm("Medianstop", "assessor", (_mode("maximize"), _count("start_step", 0))),
    Algorithm("Curvefitting", "assessor", (
        _count("epoch_num", 20, low=1), _count("start_step", 6, low=1), _fraction("threshold", 0.95),
        _count("gap", 1, low=1), _mode("maximize")), relations=(Relation("start_step", "<=", "epoch_num"),)),
)

#: Built-in tuners (advisors included) by their NNI names.
TUNERS: dict[str, Algorithm] = {algorithm.name: algorithm for algorithm in _TUNERS}
#: Built-in assessors by their NNI names.
ASSESSORS: dict[str, Algorithm] = {algorithm.name: algorithm for algorithm in _ASSESSORS}
#: The tuners that are NNI advisors.
ADVISORS: tuple[str, ...] = tuple(name for name, algorithm in TUNERS.items() if algorithm.advisor)
#: NNI built-ins tunebus does not run yet: named as such when refused.
NOT_YET_SUPPORTED: tuple[str, ...] = (
    "PPO", "PPOTuner", "NetworkMorphism", "RegularizedEvolutionTuner", "TPE_legacy",
)
#: NNI built-ins tunebus refuses on purpose, and why (the refusal says it).
REFUSED: dict[str, str] = {
    "SMAC": "it needs the smac package (SMAC3 with dask and distributed, about 350 MB), which "
            "tunebus does not carry; BOHB (model-based and multi-fidelity, like SMAC), GP, Metis "
            "or DNGO are built in",
}


def find(role: Role, name: str | None) -> Algorithm:
    """The built-in algorithm NNI would load for ``name`` (any case, or an alias).

    Raises :class:`ValueError` saying whether the name is refused, not supported yet, or unknown.
    """
    registry = TUNERS if role == "tuner" else ASSESSORS
    wanted = (name or "").lower()
    for algorithm in registry.values():
        if wanted in (spelling.lower() for spelling in (algorithm.name, *algorithm.aliases)):
            return algorithm
    supported = ", ".join(registry)
    if role == "tuner":
        for refused, reason in REFUSED.items():
            if refused.lower() == wanted:
                raise ValueError(f"NNI's built-in {role} {name!r} is not built into tunebus: {reason}")
        if any(other.lower() == wanted for other in NOT_YET_SUPPORTED):
            raise ValueError(f"NNI's built-in {role} {name!r} is not supported by tunebus yet "
                             f"(supported: {supported})")
    raise ValueError(f"{role} {name!r} is not supported (supported: {supported})")


def read_class_args(algorithm: Algorithm, class_args: Any) -> dict[str, Any]:
    """``class_args`` checked against the algorithm's schema, every argument filled with its default.

    Raises :class:`ClassArgsError` naming the first argument at fault.
    """
    def error(reason: str, argument: str | None = None) -> ClassArgsError:
        return ClassArgsError(algorithm.role, algorithm.name, reason, argument)

    if class_args is not None and not isinstance(class_args, Mapping):
        raise error("classArgs must be an object")
    given = dict(class_args or {})
    if not algorithm.takes_class_args and given:  # NNI registers it with acceptClassArgs: false
        raise error(f"takes no classArgs, got {', '.join(sorted(map(str, given)))}")
    for arg in algorithm.args:
        if arg.required and arg.name not in given:
            raise error(f"is required ({' or '.join(map(repr, arg.choices))})", arg.name)
    for name, reason in algorithm.refused_args:
        if name in given:
            raise error(reason, name)
    values = _read_object(algorithm.args, given, "", error)
    for relation in algorithm.relations:
        value, other = values[relation.arg], values[relation.other]
        if relation.op == ">" and not value > other:
            raise error(f"({value}) must be larger than {relation.other} ({other})", relation.arg)
        if relation.op == "<=" and not value <= other:
            raise error(f"must be <= {relation.other} ({other}), got {value}", relation.arg)
    return values


def search_space_problem(algorithm: Algorithm, search_space: Any) -> str | None:
    """Why the algorithm cannot take this (valid) search space, as NNI's refuses it; None if it can."""
    if algorithm.batch_space:
        try:
            batch_configurations(search_space)
        except ValueError as exc:
            return str(exc)
        return None
    specs = flatten_search_space(search_space)
    names = {spec.name for spec in specs}
    for reserved in algorithm.reserved_parameters:
        if reserved in names:
            return f"the search space may not have a parameter named {reserved}: {algorithm.reserved_because}"
    name = algorithm.name
    for spec in specs:
        where = f"search space parameter '{spec.name}'"
        if algorithm.flat_space and (spec.nested or spec.parent is not None):
            kind = "a nested choice" if spec.nested else "inside a nested choice"
            return f"{where} is {kind}; {name} takes flat parameters only, not nested choices (as in NNI)"
        if algorithm.space_types is not None and spec.type not in algorithm.space_types:
            types = ", ".join(algorithm.space_types)
            return f"{where} is type {spec.type!r}; {name} supports {types} (as in NNI)"
        if algorithm.numeric_choices and spec.type == "choice" and not all(map(_is_number, spec.values)):
            return f"{where}: {name} takes a choice of numbers only (as in NNI)"
    return None


def batch_configurations(search_space: Any) -> list[dict[str, Any]]:
    """NNI's BatchTuner's search space: one ``choice`` whose options are the configurations to run,
    each an object of parameter names to values. ValueError saying what is wrong otherwise."""
    def refuse(reason: str) -> ValueError:
        return ValueError(f"the search space must be one 'choice' parameter whose options are the "
                          f"configurations to run (NNI's BatchTuner); {reason}")

    if not isinstance(search_space, Mapping) or len(search_space) != 1:
        count = len(search_space) if isinstance(search_space, Mapping) else type(search_space).__name__
        raise refuse(f"got {count} parameters")
    (name, spec), = search_space.items()
    if not isinstance(spec, Mapping) or spec.get("_type") != "choice":
        got = spec.get("_type") if isinstance(spec, Mapping) else type(spec).__name__
        raise refuse(f"'{name}' is of type {got!r}")
    options = spec.get("_value")
    if not isinstance(options, list) or not options:
        raise refuse(f"'{name}' needs a non-empty list in _value")
    for i, option in enumerate(options):
        if not isinstance(option, Mapping) or not all(isinstance(k, str) for k in option):
            raise refuse(f"option {i} of '{name}' is not an object of parameter names to values")
    return [dict(option) for option in options]


def config_problems(tuner: Any, assessor: Any | None, search_space: Any,
                    platform: str | None = None) -> list[tuple[str, str]]:
    """``(field, reason)`` for each thing a built-in tuner or assessor of this config would refuse,
    in the words the tuner service would end the experiment with (``tunebus create`` says them
    before anything is uploaded). ``tuner`` and ``assessor`` are :class:`shared.config.AlgorithmConfig`
    sections; a custom (``className``) one is the tuner service's to load."""
    problems: list[tuple[str, str]] = []
    if tuner.class_name is None:
        algorithm = find("tuner", tuner.name)
        try:
            read_class_args(algorithm, tuner.class_args)
            problem = search_space_problem(algorithm, search_space)
            if problem is not None:
                problems.append(("tuner", f"tuner '{algorithm.name}': {problem}"))
        except ClassArgsError as exc:
            problems.append(("tuner", str(exc)))
        if (platform == "aml" and algorithm.name == "PBT"
                and (tuner.class_args or {}).get("all_checkpoint_dir") is None):
            problems.append(("tuner.classArgs.all_checkpoint_dir", AML_CHECKPOINTS_REFUSED))
    if assessor is not None and tuner.class_name is None and find("tuner", tuner.name).advisor:
        problems.append(("assessor", f"{tuner.name} is an advisor: it stops and promotes trials itself, "
                                     f"so it takes no assessor (as in NNI)"))
    elif assessor is not None and assessor.class_name is None:
        try:
            read_class_args(find("assessor", assessor.name), assessor.class_args)
        except ClassArgsError as exc:
            problems.append(("assessor", str(exc)))
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_object(args: tuple[Arg, ...], given: dict[Any, Any], prefix: str, error: _Error) -> dict[str, Any]:
    values = {arg.name: _read_value(arg, given, prefix, error) for arg in args}
    unknown = sorted(set(given) - set(values), key=str)
    if unknown:
        known = ", ".join(sorted(values))
        raise error(f"is not a known argument (known: {known})", f"{prefix}{unknown[0]}")
    return values


def _read_value(arg: Arg, given: dict[Any, Any], prefix: str, error: _Error) -> Any:
    path = f"{prefix}{arg.name}"
    value = given.get(arg.name)
    if arg.kind == "choice":
        if arg.choices == OPTIMIZE_MODES:
            value = arg.default if value is None else value
            if value not in OPTIMIZE_MODES:
                raise error(f"must be 'maximize' or 'minimize', got {value!r}", path)
            return value
        # An explicit null is a value here (TPE's constant_liar_type: null turns the liar off).
        value = given.get(arg.name, arg.default)
        if value not in arg.choices:
            raise error(f"must be one of {list(arg.choices)}, got {value!r}", path)
        return value
    if arg.kind == "object":
        if value is not None and not isinstance(value, Mapping):
            raise error(f"must be an object, got {type(value).__name__}", path)
        return _read_object(arg.args, dict(value or {}), f"{path}.", error)
    if value is None:
        return arg.default
    problem = _problem(arg, value)
    if problem is not None:
        raise error(problem, path)
    return float(value) if arg.kind == "number" else value


def _problem(arg: Arg, value: Any) -> str | None:
    if arg.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {_short(value)}"
        high = limits.MAX_CLASS_ARG_INT if arg.high is None else arg.high
        if arg.low is not None and value < arg.low:
            return f"must be >= {int(arg.low)}, got {_short(value)}"
        return f"must be <= {int(high)}, got {_short(value)}" if value > high else None
    if arg.kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {_short(value)}"
        if not abs(value) <= limits.MAX_CLASS_ARG_NUMBER:  # inf, nan, 10**400 (isfinite would overflow)
            return f"must be a finite number, got {_short(value)}"
        low = 0.0 if arg.low is None else arg.low
        high = limits.MAX_CLASS_ARG_NUMBER if arg.high is None else arg.high
        return None if low <= value <= high else f"must be between {low:g} and {high:g}, got {_short(value)}"
    if arg.kind == "flag":
        return None if isinstance(value, bool) else f"must be true or false, got {_short(value)}"
    if not isinstance(value, str) or not value.strip() or "\x00" in value or len(value) > arg.max_chars:
        return f"must be a non-blank string of at most {arg.max_chars} characters, got {_short(value)}"
    return None


def _short(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a 400-digit integer helps nobody)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
