"""The config's field types and the checks its sections share (durations, GPU indices, paths, numbers)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
)
from pydantic.alias_generators import to_camel

from shared import limits

#: Training-service platforms tunebus runs.
SUPPORTED_PLATFORMS: tuple[str, ...] = ("local", "aml")

_TIME_UNITS = {"d": 24 * 3600.0, "h": 3600.0, "m": 60.0, "s": 1.0}


# ---------------------------------------------------------------- field types


def parse_duration(value: Any) -> float:
    """Parse an NNI duration: seconds, or a number and a unit (``30s``, ``10m``, ``1h``, ``0.5d``).

    Returns float seconds; raises ``ValueError`` unless the duration is positive and at most
    :data:`shared.limits.MAX_DURATION_SECONDS` (365 days).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number of seconds or a string like 30m, got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        factor = _TIME_UNITS.get(text[-1:])
        try:
            if factor is None:
                raise ValueError
            seconds = float(text[:-1]) * factor
        except ValueError:
            raise ValueError(
                f"bad duration {value!r}: use seconds, or a number followed by s, m, h or d (e.g. 30m, 0.5d)"
            ) from None
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range: far past the cap too
            seconds = math.inf
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {short_repr(value)}")
    if seconds > limits.MAX_DURATION_SECONDS:
        raise ValueError(
            f"a duration must be at most {limits.describe_seconds(limits.MAX_DURATION_SECONDS)}, "
            f"got {short_repr(value)}"
        )
    return seconds


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to a readable length (a 400-digit number is no help in a message)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _gpu_index_list(value: Any) -> Any:
    # NNI's canonical_gpu_indices: "0,1" and 1 are shorthands for [0, 1] and [1].
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"expected GPU indices like [0, 1] or '0,1', got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def _check_gpu_indices(value: list[int] | None) -> list[int] | None:
    if value is not None:
        if any(index < 0 for index in value):
            raise ValueError(f"negative GPU index in {value}")
        if any(index > limits.MAX_GPU_INDEX for index in value):
            raise ValueError(
                f"a GPU index must be at most {limits.MAX_GPU_INDEX}, got {short_repr(max(value))}")
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate GPU index in {value}")
    return value


def resolve_path(value: Path, info: ValidationInfo, *, must_be_dir: bool = False) -> Path:
    """Resolve against the config's folder; in wire mode (no base dir) keep the path as given."""
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None:
        return value
    path = Path(os.path.abspath(Path(base_dir) / value.expanduser()))
    if must_be_dir and not path.is_dir():
        raise ValueError(f"not a directory: {path}")
    return path


StrictInt = Annotated[int, Strict()]
TrialConcurrency = Annotated[int, Strict(), Field(ge=1, le=limits.MAX_TRIAL_CONCURRENCY)]
TrialNumber = Annotated[int, Strict(), Field(ge=1, le=limits.MAX_TRIAL_NUMBER)]
TrialGpuNumber = Annotated[int, Strict(), Field(ge=0, le=limits.MAX_TRIAL_GPU_NUMBER)]
TrialsPerGpu = Annotated[int, Strict(), Field(ge=1, le=limits.MAX_TRIAL_NUMBER_PER_GPU)]
NonBlankStr = Annotated[str, AfterValidator(_not_blank)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
GpuIndices = Annotated[
    list[StrictInt] | None, BeforeValidator(_gpu_index_list), AfterValidator(_check_gpu_indices)
]
LogLevel = Literal["fatal", "error", "warning", "info", "debug", "trace"]


class Section(BaseModel):
    """Base of every config section: unknown keys forbidden, immutable, camelCase when dumped."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=AliasGenerator(serialization_alias=to_camel),
    )


def unbounded_number_problem(value: Any, path: str, depth: int) -> str | None:
    """The first number in ``value`` past the classArgs caps, as a reason naming its path."""
    if depth > limits.MAX_CLASS_ARG_DEPTH:
        return f"{path}: nested deeper than {limits.MAX_CLASS_ARG_DEPTH} levels"
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not limits.MIN_CLASS_ARG_INT <= value <= limits.MAX_CLASS_ARG_INT:
        return f"{path}: integers must fit in 64 bits (-2**63 .. 2**63-1), got {short_repr(value)}"
    if isinstance(value, float) and not abs(value) <= limits.MAX_CLASS_ARG_NUMBER:
        cap = limits.MAX_CLASS_ARG_NUMBER
        return f"{path}: numbers must be finite and at most {cap:g} in size, got {value!r}"
    items: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        items = [(join_path(path, str(key)), item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(join_path(path, index), item) for index, item in enumerate(value)]
    for item_path, item in items:
        problem = unbounded_number_problem(item, item_path, depth + 1)
        if problem is not None:
            return problem
    return None


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
