"""Reading what a trial wrote: metric blobs validated into numbers. Pure functions."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from shared.messages import MetricKind

__all__ = ["InvalidMetric", "ParsedMetric", "metric_value", "parse_metric_blob", "sequence_of"]


class InvalidMetric(ValueError):
    """A metric blob that is not what the trial SDK writes."""


@dataclass(frozen=True)
class ParsedMetric:
    """One valid metric."""

    sequence: int
    kind: MetricKind
    value: float
    raw: Any


def metric_value(raw: Any) -> float:
    """NNI's rule: a metric is a number, or a dict whose ``default`` is a number."""
    candidate = raw.get("default") if isinstance(raw, dict) else raw
    if isinstance(candidate, bool) or not isinstance(candidate, int | float):
        raise InvalidMetric(f"metric must be a number or a dict with a numeric 'default', got {raw!r}")
    value = float(candidate)
    if not math.isfinite(value):
        raise InvalidMetric(f"metric value {value} is not finite")
    return value


def sequence_of(blob_name: str) -> int:
    """``.../metrics/000012.json`` -> 12."""
    stem = blob_name.rsplit("/", 1)[-1].removesuffix(".json")
    if not stem.isdigit():
        raise InvalidMetric(f"blob {blob_name!r} is not named <sequence>.json")
    return int(stem)


def parse_metric_blob(blob_name: str, data: bytes) -> ParsedMetric:
    """Validate one metric blob; the name's sequence number must match the body's."""
    sequence = sequence_of(blob_name)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMetric(f"{blob_name}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InvalidMetric(f"{blob_name}: expected a JSON object")
    if doc.get("sequence") != sequence:
        raise InvalidMetric(f"{blob_name}: body says sequence {doc.get('sequence')!r}")
    try:
        kind = MetricKind(str(doc.get("kind")))
    except ValueError as exc:
        kind_given = doc.get("kind")
        raise InvalidMetric(f"{blob_name}: kind must be PERIODICAL or FINAL, got {kind_given!r}") from exc
    try:
        value = metric_value(doc.get("value"))
    except InvalidMetric as exc:
        raise InvalidMetric(f"{blob_name}: {exc}") from exc
    return ParsedMetric(sequence, kind, value, doc.get("value"))
