"""``nni.utils``: the helpers custom tuners and assessors use, with NNI's behaviour."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, unique
from pathlib import Path
from typing import Any

__all__ = [
    "ClassArgsValidator",
    "MetricType",
    "NodeType",
    "OptimizeMode",
    "convert_dict2tuple",
    "extract_scalar_history",
    "extract_scalar_reward",
    "merge_parameter",
    "split_index",
]


@unique
class OptimizeMode(Enum):
    """Whether the tuner minimises or maximises the reported metric (``OptimizeMode('maximize')``)."""

    Minimize = "minimize"
    Maximize = "maximize"


class NodeType:
    """Keys of NNI's search-space and parameter documents."""

    ROOT = "root"
    TYPE = "_type"
    VALUE = "_value"
    INDEX = "_index"
    NAME = "_name"


class MetricType:
    """The kinds of metric a trial reports."""

    FINAL = "FINAL"
    PERIODICAL = "PERIODICAL"
    REQUEST_PARAMETER = "REQUEST_PARAMETER"


def split_index(params: Any) -> Any:
    """``params`` without choice indices: every ``{"_index": i, "_value": v}`` becomes ``v``
    (recursively); everything else is returned as it is."""
    if isinstance(params, dict):
        if NodeType.INDEX in params:
            return split_index(params[NodeType.VALUE])
        return {key: split_index(value) for key, value in params.items()}
    return params


_BAD_RESULT = ('Incorrect final result: the final result should be float/int, '
               'or a dict which has a key named "default" whose value is float/int.')


def extract_scalar_reward(value: Any, scalar_key: str = "default") -> Any:
    """The number in a trial's result: ``value`` itself if a number, else ``value[scalar_key]``.

    Raises RuntimeError (NNI's message) for anything else.
    """
    if isinstance(value, float | int):
        return value
    if isinstance(value, dict) and isinstance(value.get(scalar_key), float | int):
        return value[scalar_key]
    raise RuntimeError(_BAD_RESULT)


def extract_scalar_history(trial_history: list[Any], scalar_key: str = "default") -> list[Any]:
    """:func:`extract_scalar_reward` of every intermediate result."""
    return [extract_scalar_reward(value, scalar_key) for value in trial_history]


def convert_dict2tuple(value: Any) -> Any:
    """A dict as a sorted tuple of items, recursively, so that it can be hashed.

    As in NNI, nested dicts in ``value`` are converted in place.
    """
    if isinstance(value, dict):
        for key in value:
            value[key] = convert_dict2tuple(value[key])
        return tuple(sorted(value.items()))
    return value


def merge_parameter(base_params: Any, override_params: dict[str, Any] | None) -> Any:
    """Update ``base_params`` (a dict or an argparse Namespace) in place from ``override_params``;
    every key must exist (ValueError) and keep its type (an int for a float is converted)."""
    if override_params is None:
        return base_params
    is_dict = isinstance(base_params, dict)
    for key, value in override_params.items():
        present = key in base_params if is_dict else hasattr(base_params, key)
        if not present:
            raise ValueError(f"Key '{key}' not found in base parameters.")
        base = base_params[key] if is_dict else getattr(base_params, key)
        value = _compatible(key, base, value)
        if is_dict:
            base_params[key] = value
        else:
            setattr(base_params, key, value)
    return base_params


def _compatible(key: str, base: Any, value: Any) -> Any:
    if base is None or isinstance(value, type(base)):
        return value
    if isinstance(base, float) and isinstance(value, int):
        return float(value)
    raise ValueError(f'Expected "{key}" in override parameters to have type {type(base).__name__}, '
                     f"but found {type(value).__name__}")


class _Check:
    """A check in the style of the ``schema`` package: :meth:`validate` returns the value or raises."""

    def __init__(self, checks: list[tuple[Callable[[Any], bool], str]]) -> None:
        self.checks = checks

    def validate(self, value: Any) -> Any:
        for check, error in self.checks:
            if not check(value):
                raise ValueError(error)
        return value


class ClassArgsValidator:
    """Validates a tuner's or assessor's classArgs; subclasses override :meth:`validate_class_args`
    (NNI runs validators for registered built-ins; a ``className`` algorithm checks its own)."""

    def validate_class_args(self, **kwargs: Any) -> None:
        """Raise if the classArgs are invalid; accepts everything by default."""

    def choices(self, key: str, *args: Any) -> _Check:
        """A check that the value is one of ``args``."""
        return _Check([(lambda n: n in args, f"{key} should be in [{args}]!")])

    def range(self, key: str, keyType: type, start: Any, end: Any) -> _Check:
        """A check that the value is a ``keyType`` in ``[start, end]``."""
        return _Check([(lambda n: isinstance(n, keyType), f"{key} should be {keyType.__name__} type!"),
                       (lambda n: start <= n <= end, f"{key} should be in range of ({start}, {end})!")])

    def path(self, key: str) -> _Check:
        """A check that the value is a string naming an existing path."""
        return _Check([(lambda p: isinstance(p, str), f"{key} should be a string!"),
                       (lambda p: Path(p).exists(), f"{key} path does not exist!")])
