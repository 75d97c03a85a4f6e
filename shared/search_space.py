"""NNI search spaces: validation, a flat internal form, and sampling with NNI's exact semantics.

A search space is NNI's JSON format: ``{"lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}, ...}``.
Every algorithm works on the *flat* form built by :func:`flatten_search_space`: one
:class:`ParamSpec` per parameter, nested choices included, each with an *internal* value:

* ``choice`` / ``randint``: an option index ``0 .. size-1``;
* the ``log`` types: the logarithm of the value;
* the others: the value before rounding.

:func:`to_value` turns an internal value into what the user sees (NNI's format), and
:func:`build_parameters` assembles the nested parameter dict a trial receives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import limits

if TYPE_CHECKING:  # numpy only types the samplers' rng; validation (the CLI's) must not load it
    import numpy as np

__all__ = [
    "PARAMETER_TYPES",
    "ParamSpec",
    "SearchSpaceError",
    "build_parameters",
    "flatten_search_space",
    "from_value",
    "is_active",
    "parse_parameters",
    "quantize",
    "sample_internal",
    "sample_parameters",
    "sample_value",
    "to_value",
    "validate_search_space",
]

PARAMETER_TYPES: tuple[str, ...] = (
    "choice",
    "randint",
    "uniform",
    "quniform",
    "loguniform",
    "qloguniform",
    "normal",
    "qnormal",
    "lognormal",
    "qlognormal",
)

#: The key of a flat parameter: names, with the option index after a nested choice's name
#: (``("optimizer", 0, "lr")``), the same shape as NNI's ``ParameterKey``.
ParamPath = tuple[str | int, ...]


class SearchSpaceError(ValueError):
    """A search space is malformed; ``parameter`` is the slash-joined path, ``reason`` the problem."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"search space parameter '{parameter}': {reason}")
        self.parameter = parameter
        self.reason = reason


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a flattened search space (see the module docstring for internal values)."""

    path: ParamPath
    name: str  # slash-joined names as they appear in the trial's parameters, e.g. "optimizer/lr"
    type: str
    values: tuple[Any, ...]
    categorical: bool
    size: int = 0  # number of options (categorical only)
    low: float = 0.0  # internal bounds (log of the value for log types); uniform types only
    high: float = 0.0
    mu: float = 0.0  # normal types only (of the log for lognormal)
    sigma: float = 0.0
    q: float | None = None
    log: bool = False
    nested: bool = False  # a choice whose options are sub-spaces with "_name"

    @property
    def normal(self) -> bool:
        """Whether the internal value is normally (not uniformly) distributed."""
        return "normal" in self.type

    @property
    def clip(self) -> tuple[float, float] | None:
        """NNI clips only q(log)uniform values back into [low, high] after rounding."""
        if self.type in ("quniform", "qloguniform"):
            return float(self.values[0]), float(self.values[1])
        return None

    @property
    def parent(self) -> tuple[ParamPath, int] | None:
        """For a parameter inside a nested choice: (path of that choice, option index)."""
        if len(self.path) >= 3 and isinstance(self.path[-2], int):
            return self.path[:-2], int(self.path[-2])
        return None


# ---------------------------------------------------------------- validation


def validate_search_space(space: Any) -> None:
    """Raise :class:`SearchSpaceError` unless ``space`` is a valid NNI search space."""
    flatten_search_space(space)


def flatten_search_space(space: Any) -> list[ParamSpec]:
    """Validate ``space`` and return its parameters, parents before the parameters they gate."""
    if not isinstance(space, Mapping):
        raise SearchSpaceError("<root>", f"the search space must be an object, got {type(space).__name__}")
    if not space:
        raise SearchSpaceError("<root>", "the search space is empty")
    out: list[ParamSpec] = []
    _flatten_into(out, space, (), ())
    return out


def _check_size(out: list[ParamSpec], names: tuple[str, ...], label: str) -> None:
    # Checked while flattening, so an oversized space is refused before it is all read.
    if len(out) >= limits.MAX_SEARCH_SPACE_PARAMETERS:
        raise SearchSpaceError(
            "<root>", f"more than {limits.MAX_SEARCH_SPACE_PARAMETERS} parameters (nested ones included)"
        )
    if len(names) > limits.MAX_SEARCH_SPACE_DEPTH:
        raise SearchSpaceError(label, f"nested choices deeper than {limits.MAX_SEARCH_SPACE_DEPTH} levels")


def _flatten_into(
    out: list[ParamSpec], space: Mapping[str, Any], path: ParamPath, names: tuple[str, ...]
) -> None:
    for key, spec in space.items():
        if key == "_name" and path:
            continue  # the option's own label inside a nested choice
        label = "/".join((*names, str(key)))
        if not isinstance(key, str) or not key:
            raise SearchSpaceError(label, "parameter names must be non-empty strings")
        _check_size(out, names, label)
        param = _parse_parameter((*path, key), label, spec)
        out.append(param)
        if param.nested:
            for index, option in enumerate(param.values):
                _flatten_into(out, option, (*path, key, index), (*names, key))


def _parse_parameter(path: ParamPath, label: str, spec: Any) -> ParamSpec:
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            label, f"must be an object with '_type' and '_value', got {type(spec).__name__}"
        )
    if "_type" not in spec or "_value" not in spec:
        raise SearchSpaceError(label, "must have both '_type' and '_value'")
    type_, args = spec["_type"], spec["_value"]
    if type_ not in PARAMETER_TYPES:
        raise SearchSpaceError(
            label, f"unknown _type {type_!r}; expected one of {', '.join(PARAMETER_TYPES)}"
        )
    if not isinstance(args, Sequence) or isinstance(args, str):
        raise SearchSpaceError(label, f"_value must be a list, got {type(args).__name__}")
    if type_ == "choice":
        return _parse_choice(path, label, list(args))
    if type_ == "randint":
        return _parse_randint(path, label, list(args))
    return _parse_numeric(path, label, type_, list(args))


def _parse_choice(path: ParamPath, label: str, options: list[Any]) -> ParamSpec:
    if not options:
        raise SearchSpaceError(label, "choice needs at least one option")
    if len(options) > limits.MAX_CHOICE_OPTIONS:
        raise SearchSpaceError(
            label, f"choice has {len(options)} options; at most {limits.MAX_CHOICE_OPTIONS} are allowed"
        )
    labelled = [isinstance(o, Mapping) and "_name" in o for o in options]
    nested = all(labelled)
    if any(labelled) and not nested:
        raise SearchSpaceError(
            label, "a nested choice needs '_name' in every option (some have it, some do not)"
        )
    if nested:
        names = [o["_name"] for o in options]
        if len(set(map(repr, names))) != len(names):
            raise SearchSpaceError(label, f"nested choice option names must be unique, got {names}")
    return ParamSpec(path, label, "choice", tuple(options), True, size=len(options), nested=nested)


def _parse_randint(path: ParamPath, label: str, args: list[Any]) -> ParamSpec:
    if len(args) != 2:
        raise SearchSpaceError(label, f"randint needs [low, high], got {len(args)} values")
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise SearchSpaceError(label, f"randint bounds must be integers, got {args}")
    low, high = args
    if max(abs(low), abs(high)) > limits.MAX_RANDINT_MAGNITUDE:
        raise SearchSpaceError(label, f"randint bounds must be within ±2**53, got {_short(args)}")
    if low >= high:
        raise SearchSpaceError(label, f"low ({low}) must be < high ({high}); randint's high is exclusive")
    return ParamSpec(path, label, "randint", (low, high), True, size=high - low)


def _parse_numeric(path: ParamPath, label: str, type_: str, args: list[Any]) -> ParamSpec:
    quantized = type_.startswith("q")
    normal = "normal" in type_
    names = ("mu", "sigma") if normal else ("low", "high")
    expected = [*names, "q"] if quantized else list(names)
    if len(args) != len(expected):
        raise SearchSpaceError(label, f"{type_} needs [{', '.join(expected)}], got {len(args)} values")
    for name, arg in zip(expected, args, strict=True):
        if isinstance(arg, bool) or not isinstance(arg, int | float) or not _bounded(arg):
            raise SearchSpaceError(
                label, f"{name} must be a finite number of at most {limits.MAX_SEARCH_SPACE_NUMBER:g} "
                       f"in size, got {_short(arg)}"
            )
    q = float(args[2]) if quantized else None
    if q is not None and q <= 0:
        raise SearchSpaceError(label, f"q ({args[2]}) must be > 0")
    log = "log" in type_
    if normal:
        if args[1] <= 0:
            raise SearchSpaceError(label, f"sigma ({args[1]}) must be > 0")
        return ParamSpec(
            path, label, type_, tuple(args), False, mu=float(args[0]), sigma=float(args[1]), q=q, log=log
        )
    low, high = args[0], args[1]
    if low >= high:
        raise SearchSpaceError(label, f"low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise SearchSpaceError(label, f"low ({low}) must be > 0 for {type_}")
    ilow, ihigh = (math.log(low), math.log(high)) if log else (float(low), float(high))
    return ParamSpec(path, label, type_, tuple(args), False, low=ilow, high=ihigh, q=q, log=log)


def _bounded(number: float) -> bool:
    # abs() first: math.isfinite(10**400) raises OverflowError, a comparison does not.
    return abs(number) <= limits.MAX_SEARCH_SPACE_NUMBER


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


# ---------------------------------------------------------------- internal values <-> user values


def quantize(x: float, q: float, low: float | None = None, high: float | None = None) -> float:
    """NNI's rounding: ``round(x / q) * q`` (Python's round), then clip into [low, high] if given."""
    x = round(x / q) * q
    if low is not None:
        x = max(x, low)
    if high is not None:
        x = min(x, high)
    return float(x)


def to_value(spec: ParamSpec, x: float) -> Any:
    """The user-facing value of internal value ``x`` (NNI's ``deformat_parameters`` for one parameter)."""
    if spec.categorical:
        index = int(x)
        if spec.type == "randint":
            return int(spec.values[0]) + index
        option = spec.values[index]
        return option["_name"] if spec.nested else option
    value = math.exp(x) if spec.log else float(x)
    if spec.type == "loguniform":  # exp(log(high)) may overshoot high by a rounding error
        value = min(max(value, float(spec.values[0])), float(spec.values[1]))
    if spec.q is not None:
        clip = spec.clip
        value = quantize(value, spec.q, *(clip if clip else (None, None)))
    return value


def from_value(spec: ParamSpec, value: Any) -> float:
    """Internal value of a user-facing ``value`` (for imported or resumed trials); inverse of to_value."""
    if spec.type == "randint":
        return float(int(value) - int(spec.values[0]))
    if spec.type == "choice":
        target = value.get("_name") if spec.nested and isinstance(value, Mapping) else value
        options = [o["_name"] for o in spec.values] if spec.nested else list(spec.values)
        for index, option in enumerate(options):
            if (option == target and type(option) is type(target)) or _same_number(option, target):
                return float(index)
        raise ValueError(f"{value!r} is not an option of '{spec.name}'")
    number = float(value)
    if spec.log and spec.q is not None and number == 0:
        return math.log(spec.q / 4)  # qlognormal rounds small values to 0; any x < log(q/2) gives that
    if spec.log:
        if number <= 0:
            raise ValueError(f"{number!r} is not positive, so not a value of '{spec.name}'")
        return math.log(number)
    return number


def _same_number(a: Any, b: Any) -> bool:
    numbers = int | float
    both = (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    )
    return bool(both and a == b)


def is_active(spec: ParamSpec, internal: Mapping[ParamPath, float]) -> bool:
    """Whether ``spec`` takes part given the (partial) internal values of its parents."""
    parent = spec.parent
    if parent is None:
        return True
    parent_path, option = parent
    return parent_path in internal and int(internal[parent_path]) == option


def build_parameters(specs: Sequence[ParamSpec], internal: Mapping[ParamPath, float]) -> dict[str, Any]:
    """Assemble the nested parameter dict (NNI's format) from internal values of active parameters."""
    params: dict[str, Any] = {}
    for spec in specs:
        if spec.path not in internal:
            continue
        names = [p for p in spec.path if isinstance(p, str)]
        node = params
        for name in names[:-1]:
            node = node.setdefault(name, {})
        value = to_value(spec, internal[spec.path])
        if spec.nested:
            node.setdefault(names[-1], {})["_name"] = value
        else:
            node[names[-1]] = value
    return params


def parse_parameters(specs: Sequence[ParamSpec], params: Mapping[str, Any]) -> dict[ParamPath, float]:
    """Internal values of a parameter dict in NNI's format (inverse of build_parameters).

    Raises ``ValueError`` (or ``KeyError``) when ``params`` does not fit the space.
    """
    internal: dict[ParamPath, float] = {}
    for spec in specs:
        if not is_active(spec, internal):
            continue
        node: Any = params
        for name in (p for p in spec.path if isinstance(p, str)):
            node = node[name]
        internal[spec.path] = from_value(spec, node)
    return internal


# ---------------------------------------------------------------- sampling


def sample_internal(spec: ParamSpec, rng: np.random.Generator) -> float:
    """Draw one internal value from the parameter's prior (NNI's random tuner distribution)."""
    if spec.categorical:
        return float(rng.integers(spec.size))
    if spec.normal:
        return float(rng.normal(spec.mu, spec.sigma))
    return float(rng.uniform(spec.low, spec.high))


def sample_parameters(
    space: Mapping[str, Any] | Sequence[ParamSpec], rng: np.random.Generator
) -> dict[str, Any]:
    """Draw a whole parameter dict from the prior, nested choices included, in NNI's format."""
    specs = flatten_search_space(space) if isinstance(space, Mapping) else space
    internal: dict[ParamPath, float] = {}
    for spec in specs:
        if is_active(spec, internal):
            internal[spec.path] = sample_internal(spec, rng)
    return build_parameters(specs, internal)


def sample_value(spec: Mapping[str, Any], rng: np.random.Generator) -> Any:
    """Draw one value for a single ``{"_type": ..., "_value": ...}`` spec (nested choices included)."""
    return sample_parameters({"value": spec}, rng)["value"]
