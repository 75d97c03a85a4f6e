"""Reading what a trial wrote: its results blob, line by line, into metrics or named rejections.

The blob is the trial's own (an append blob it can only append to), so its content is hostile
input: anything at all may be in it. Every byte ends as a :class:`ParsedMetric` or as a problem
string naming the record and what is wrong with it; nothing here raises on content. Pure.

Rules (the README's "Results" section says why):

* one record per line: a JSON object ``{"sequence": n, "kind": "PERIODICAL"|"FINAL",
  "value": <number or dict with a numeric 'default'>, ...}``;
* the value must be a finite float64 (NaN, infinities, 10**400, strings are rejected);
* a repeated line (an append retried after its answer was lost) counts once; the same
  sequence with other content, a second FINAL, or more than ``max_records`` records are
  problems; so are lines over ``max_record_bytes`` and a dict value nested deeper than
  :data:`MAX_DEPTH`;
* at most ``max_bytes`` of the blob are read; beyond that is a problem, not read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from shared.messages import MetricKind
from shared.metric_rule import InvalidMetric, metric_number

__all__ = [
    "MAX_DEPTH",
    "InvalidMetric",
    "ParsedMetric",
    "ResultsLimits",
    "ResultsRead",
    "metric_value",
    "parse_record",
    "parse_results",
]

#: How deep a dict metric may nest (NNI's dict metrics are flat or nearly so).
MAX_DEPTH = 16
_SHOWN = 80  # characters of offending content quoted in a problem


@dataclass(frozen=True)
class ResultsLimits:
    """Caps on what is read of one trial attempt's results."""

    max_bytes: int = 4 * 1024 * 1024
    max_records: int = 10_000
    max_record_bytes: int = 64 * 1024


@dataclass(frozen=True)
class ParsedMetric:
    """One valid metric."""

    sequence: int
    kind: MetricKind
    value: float
    raw: Any


@dataclass
class ResultsRead:
    """What a stretch of the results blob holds."""

    metrics: list[ParsedMetric] = field(default_factory=list)  # by sequence, one per sequence
    problems: list[str] = field(default_factory=list)
    consumed: int = 0  # bytes of whole lines read, from the stretch's start


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def metric_value(raw: Any) -> float:
    """A trial's reported value by NNI's rule (:func:`shared.metric_rule.metric_number`), which the
    ingestor also requires to be finite and, for a dict, not nested too deep."""
    value = metric_number(raw)
    if not math.isfinite(value):
        raise InvalidMetric(f"value {value} is not finite")
    if isinstance(raw, dict) and not _depth_ok(raw):
        raise InvalidMetric(f"dict value nests deeper than {MAX_DEPTH} levels")
    return value


def parse_record(line: bytes, max_records: int) -> ParsedMetric:
    """One line of the results blob (without its newline) as a metric; InvalidMetric if it is not."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidMetric(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise InvalidMetric("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise InvalidMetric(f"not JSON ({str(exc)[:_SHOWN]})") from None
    if not isinstance(doc, dict):
        raise InvalidMetric(f"expected a JSON object, got {type(doc).__name__}")
    sequence = doc.get("sequence")
    if type(sequence) is not int or not 0 <= sequence < max_records:
        raise InvalidMetric(f"sequence must be an int in [0, {max_records}), got {_shown(sequence)}")
    try:
        kind = MetricKind(str(doc.get("kind")))
    except (ValueError, TypeError):
        raise InvalidMetric(f"kind must be PERIODICAL or FINAL, got {_shown(doc.get('kind'))}") from None
    return ParsedMetric(sequence, kind, metric_value(doc.get("value")), doc.get("value"))


class _Collector:
    """Keeps one metric per sequence and one FINAL; notes every other record as a problem."""

    def __init__(self, limits: ResultsLimits, base_offset: int) -> None:
        self.limits = limits
        self.base_offset = base_offset
        self.read = ResultsRead()
        self._lines: dict[int, bytes] = {}
        self._final: int | None = None
        self._count = 0

    def add(self, line: bytes, offset: int) -> None:
        where = f"results record at byte {self.base_offset + offset}"
        self._count += 1
        if self._count > self.limits.max_records:
            if self._count == self.limits.max_records + 1:
                self.read.problems.append(f"more than {self.limits.max_records} results records: the rest "
                                          "were ignored")
            return
        if len(line) > self.limits.max_record_bytes:
            self.read.problems.append(f"{where}: {len(line)} bytes, over the "
                                      f"{self.limits.max_record_bytes}-byte limit of a record")
            return
        try:
            metric = parse_record(line, self.limits.max_records)
        except InvalidMetric as exc:
            self.read.problems.append(f"{where}: {exc}")
            return
        self._keep(metric, line, where)

    def _keep(self, metric: ParsedMetric, line: bytes, where: str) -> None:
        seen = self._lines.get(metric.sequence)
        if seen is not None:
            if seen != line:  # an identical line is a retried append: counted once, silently
                self.read.problems.append(f"{where}: sequence {metric.sequence} reported twice, differently")
            return
        if metric.kind == MetricKind.FINAL:
            if self._final is not None:
                self.read.problems.append(f"{where}: a second FINAL result (sequence {metric.sequence}); "
                                          f"the first (sequence {self._final}) counts")
                return
            self._final = metric.sequence
        self._lines[metric.sequence] = line
        self.read.metrics.append(metric)


def parse_results(data: bytes, limits: ResultsLimits, *, complete: bool, base_offset: int = 0,
                  total_size: int | None = None) -> ResultsRead:
    """The records in ``data``, a stretch of the results blob starting at ``base_offset``.

    ``complete``: the trial has ended, so an unterminated last line is a record too (a problem
    unless it parses). Otherwise reading stops after the last newline (``consumed`` says where),
    for the next read to start there. ``total_size`` is the blob's size: beyond
    ``limits.max_bytes`` that is a problem.
    """
    collector = _Collector(limits, base_offset)
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            if complete:
                collector.add(data[position:], position)
                position = len(data)
            break
        if end > position:  # blank lines are ignored
            collector.add(data[position:end], position)
        position = end + 1
    read = collector.read
    read.consumed = position
    if total_size is not None and total_size > limits.max_bytes:
        read.problems.append(f"the results blob holds {total_size} bytes; only the first "
                             f"{limits.max_bytes} were read")
    read.metrics.sort(key=lambda m: m.sequence)
    return read
