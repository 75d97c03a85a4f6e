"""NNI's assessment result and the reading of intermediate metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import Enum
from typing import Any

from shared.metric_rule import metric_number

__all__ = ["AssessResult", "finite", "scalar_history"]


class AssessResult(Enum):
    """NNI's ``AssessResult``: Good keeps a trial running, Bad asks for it to be stopped."""

    Good = True
    Bad = False


def scalar_history(history: Iterable[Any]) -> list[float]:
    """Intermediate results as floats: numbers, or dicts with ``default`` (NNI's extract_scalar_history)."""
    return [metric_number(value) for value in history]


def finite(values: list[float]) -> bool:
    """Whether every value is a finite number (a diverged curve cannot be fitted)."""
    return all(math.isfinite(v) for v in values)
