"""Errors raised when building assessors."""

from __future__ import annotations

__all__ = ["AssessorConfigError", "check_int", "check_known", "check_mode", "check_number"]

from collections.abc import Mapping
from typing import Any

from shared import limits


class AssessorConfigError(ValueError):
    """An assessor name or classArg is wrong; the message names the assessor and the argument."""

    def __init__(self, assessor: str, reason: str, argument: str | None = None) -> None:
        where = f"classArgs.{argument} " if argument else ""
        super().__init__(f"assessor '{assessor}': {where}{reason}")
        self.assessor = assessor
        self.argument = argument
        self.reason = reason


def check_known(assessor: str, args: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Reject classArgs the assessor does not take (a typo must not pass silently)."""
    for key in args:
        if key not in known:
            raise AssessorConfigError(assessor, f"is not a known argument (known: {', '.join(known)})", key)


def check_mode(assessor: str, args: Mapping[str, Any]) -> bool:
    """NNI's optimize_mode (default maximize); returns True when maximizing."""
    mode = args.get("optimize_mode", "maximize")
    if mode not in ("maximize", "minimize"):
        raise AssessorConfigError(
            assessor, f"must be 'maximize' or 'minimize', got {mode!r}", "optimize_mode"
        )
    return mode == "maximize"


def check_int(
    assessor: str, args: Mapping[str, Any], key: str, default: int, low: int,
    high: int = limits.MAX_CLASS_ARG_COUNT,
) -> int:
    """An integer classArg in [low, high]."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AssessorConfigError(assessor, f"must be an integer, got {_short(value)}", key)
    if value < low:
        raise AssessorConfigError(assessor, f"must be >= {low}, got {_short(value)}", key)
    if value > high:
        raise AssessorConfigError(assessor, f"must be <= {high}, got {_short(value)}", key)
    return value


def check_number(
    assessor: str, args: Mapping[str, Any], key: str, default: float, low: float, high: float
) -> float:
    """A numeric classArg in [low, high]."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AssessorConfigError(assessor, f"must be a number, got {_short(value)}", key)
    if not abs(value) <= limits.MAX_CLASS_ARG_NUMBER:  # inf, nan, 10**400 (isfinite would overflow)
        raise AssessorConfigError(assessor, f"must be a finite number, got {_short(value)}", key)
    if not low <= value <= high:
        raise AssessorConfigError(assessor, f"must be between {low} and {high}, got {value}", key)
    return float(value)


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
