"""NNI's program-friendly search-space form: one :class:`ParameterSpec` per parameter, keyed by path.

A tuner works on "formatted" parameters: a flat dict from a parameter's key (its path: names,
and for a parameter inside a nested choice the index of that choice's candidate) to a number —
an index for ``choice`` and ``randint`` (an offset from the low end), the logarithm for the
``log*`` types, the raw value otherwise. :func:`deformat_parameters` turns such a dict into the
parameters a trial gets; :func:`format_parameters` goes back (for resumed trials).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ...typehint import Parameters, SearchSpace

__all__ = ["ParameterSpec", "deformat_parameters", "format_parameters", "format_search_space"]

ParameterKey = tuple[Any, ...]  # str names, and int candidate indices of nested choices
FormattedParameters = dict[ParameterKey, Any]
FormattedSearchSpace = dict[ParameterKey, "ParameterSpec"]


class ParameterSpec(NamedTuple):
    """One parameter's domain. For ``loguniform``/``qloguniform``, ``low`` and ``high`` are logs."""

    name: str                        # its key in the JSON object
    type: str                        # its "_type"
    values: list[Any]                # its "_value"
    key: ParameterKey                # its path
    categorical: bool                # choice / randint (an index), else numerical
    size: int = None                 # type: ignore[assignment]  # candidates, when categorical
    chosen_size: int | None = 1
    low: float = None                # type: ignore[assignment]
    high: float = None               # type: ignore[assignment]
    normal_distributed: bool = None  # type: ignore[assignment]
    mu: float = None                 # type: ignore[assignment]
    sigma: float = None              # type: ignore[assignment]
    q: float | None = None           # values are multiples of q
    clip: tuple[float, float] | None = None
    log_distributed: bool = None     # type: ignore[assignment]

    def is_activated_in(self, partial_parameters: FormattedParameters) -> bool:
        """Whether this parameter takes part, given the choices made so far (the candidate of the
        nested choice it sits in must be the chosen one); parameters are visited in key order."""
        if self.is_nested():
            return bool(partial_parameters[self.key[:-2]] == self.key[-2])
        return True

    def is_nested(self) -> bool:
        """Whether this parameter sits inside a candidate of a nested choice."""
        return len(self.key) >= 2 and isinstance(self.key[-2], int)


def format_search_space(search_space: SearchSpace) -> FormattedSearchSpace:
    """Every parameter of ``search_space`` (nested ones too) as a ParameterSpec, keyed by its path."""
    return {spec.key: spec for spec in _specs((), search_space)}


def _specs(parent: ParameterKey, space: Any) -> list[ParameterSpec]:
    found: list[ParameterSpec] = []
    for name, entry in space.items():
        if name == "_name":
            continue
        key = (*parent, name)
        found.append(_spec(key, entry["_type"], entry["_value"]))
        if entry["_type"] == "choice" and _nested(entry["_value"]):
            for index, candidate in enumerate(entry["_value"]):
                found += _specs((*key, index), candidate)
    return found


def _spec(key: ParameterKey, type_: str, values: list[Any]) -> ParameterSpec:
    base = {"name": key[-1], "type": type_, "values": values, "key": key}
    if type_ == "choice":
        return ParameterSpec(**base, categorical=True, size=len(values))
    if type_ == "randint":
        return ParameterSpec(**base, categorical=True,
                             size=math.ceil(float(values[1])) - math.ceil(float(values[0])))
    q = float(values[2]) if type_.startswith("q") else None
    logged = "log" in type_
    if "normal" in type_:
        return ParameterSpec(**base, categorical=False, q=q, log_distributed=logged, normal_distributed=True,
                             mu=float(values[0]), sigma=float(values[1]))
    low, high = float(values[0]), float(values[1])
    clip = (low, high) if q is not None else None
    if logged:
        low, high = math.log(low), math.log(high)
    return ParameterSpec(**base, categorical=False, q=q, log_distributed=logged, normal_distributed=False,
                         low=low, high=high, clip=clip)


def deformat_parameters(formatted_parameters: FormattedParameters,
                        formatted_search_space: FormattedSearchSpace) -> Parameters:
    """The trial's parameters for formatted ones: indices become values (``randint``: low end +
    offset), logs are exponentiated, ``q`` types rounded to a multiple of q and clipped into
    range, and nested choices become nested dicts (with the candidate's ``_name``)."""
    params: Parameters = {}
    for key, x in formatted_parameters.items():
        spec = formatted_search_space[key]
        if spec.categorical:
            _categorical(params, spec, int(x))
            continue
        if spec.log_distributed:
            x = math.exp(x)
        if spec.q is not None:
            x = round(x / spec.q) * spec.q
        if spec.clip:
            x = min(max(x, spec.clip[0]), spec.clip[1])
        _put(params, key, x.item() if hasattr(x, "item") else x)  # a numpy number as a plain one
    return params


def _categorical(params: Parameters, spec: ParameterSpec, index: int) -> None:
    if spec.type == "randint":
        _put(params, spec.key, int(_randint_low(spec) + index))
    elif _nested(spec.values):
        _put(params, (*spec.key, "_name"), spec.values[index]["_name"])
    else:
        _put(params, spec.key, spec.values[index])


def format_parameters(parameters: Parameters,
                      formatted_search_space: FormattedSearchSpace) -> FormattedParameters:
    """The formatted form of a trial's parameters (inexact for ``q`` types and for choices with
    repeated candidates, as in NNI)."""
    formatted: FormattedParameters = {}
    for key, spec in formatted_search_space.items():
        if not spec.is_activated_in(formatted):
            continue
        value: Any = parameters
        for part in key:
            if isinstance(part, str):
                value = value[part]
        if spec.type == "randint":
            formatted[key] = value - _randint_low(spec)
        elif spec.categorical and _nested(spec.values):
            formatted[key] = [candidate["_name"] for candidate in spec.values].index(value["_name"])
        elif spec.categorical:
            formatted[key] = spec.values.index(value)
        else:
            formatted[key] = math.log(value) if spec.log_distributed else value
    return formatted


def _randint_low(spec: ParameterSpec) -> int:
    return min(math.ceil(float(bound)) for bound in spec.values)


def _nested(values: list[Any]) -> bool:
    """Whether a choice's candidates are sub-spaces (dicts with a ``_name``)."""
    return bool(values) and all(isinstance(value, dict) and "_name" in value for value in values)


def _put(params: dict[str, Any], key: ParameterKey, value: Any) -> None:
    """Set ``value`` at the path ``key``, skipping candidate indices and making dicts on the way."""
    names = [part for part in key if not isinstance(part, int)]
    for name in names[:-1]:
        params = params.setdefault(name, {})
    params[names[-1]] = value
