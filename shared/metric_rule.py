"""NNI's metric rule, in one place: a reported result is a number, or a dict whose ``default``
key holds the number. Pure and dependency-free (the CLI's checks import it with the tuners).

What each reader does with a number that is not finite is its own policy: the ingestor rejects
it (:func:`shared.results_records.metric_value`), a tuner leaves it out of its model, an assessor
sees a diverged curve.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["InvalidMetric", "loss_of", "metric_number"]

_SHOWN = 80  # characters of the offending value quoted in an error


class InvalidMetric(ValueError):
    """A reported result that is not a number nor a dict with a numeric ``default``."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def metric_number(raw: Any) -> float:
    """The float ``raw`` stands for; InvalidMetric names what is wrong. NaN and infinities pass."""
    candidate = raw.get("default") if isinstance(raw, Mapping) else raw
    if isinstance(candidate, bool) or not isinstance(candidate, numbers.Real):
        if isinstance(raw, Mapping) and "default" not in raw:
            keys = sorted(map(str, raw))[:10]
            raise InvalidMetric(f"a dict metric needs a 'default' key, got keys {keys}")
        raise InvalidMetric(f"value must be a number or a dict with a numeric 'default', got {_shown(raw)}")
    try:
        return float(candidate)
    except OverflowError:
        bits = candidate.bit_length() if isinstance(candidate, int) else "too many"
        raise InvalidMetric(f"value is an int too large for a float ({bits} bits)") from None


def loss_of(raw: Any, *, minimize: bool) -> float | None:
    """What an algorithm minimises for a reported result: the number (negated when maximising);
    None for a result that is not a finite number (a failed or diverged trial ranks last)."""
    try:
        value = metric_number(raw)
    except InvalidMetric:
        return None
    if not math.isfinite(value):
        return None
    return value if minimize else -value
