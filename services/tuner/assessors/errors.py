"""Errors raised when building assessors."""

from __future__ import annotations

__all__ = ["AssessorConfigError", "check_int", "check_known", "check_mode", "check_number"]

import math
from collections.abc import Mapping
from typing import Any


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


def check_int(assessor: str, args: Mapping[str, Any], key: str, default: int, low: int) -> int:
    """An integer classArg of at least ``low``."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AssessorConfigError(assessor, f"must be an integer, got {value!r}", key)
    if value < low:
        raise AssessorConfigError(assessor, f"must be >= {low}, got {value}", key)
    return value


def check_number(
    assessor: str, args: Mapping[str, Any], key: str, default: float, low: float, high: float
) -> float:
    """A numeric classArg in [low, high]."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AssessorConfigError(assessor, f"must be a number, got {value!r}", key)
    if not low <= value <= high:
        raise AssessorConfigError(assessor, f"must be between {low} and {high}, got {value}", key)
    return float(value)
