"""Every content of a trial's results blob ends as metrics or named problems, never an exception."""

from __future__ import annotations

import json
import random

import pytest

from shared.messages import MetricKind
from shared.results_records import ResultsLimits, parse_results

LIMITS = ResultsLimits(max_bytes=64 * 1024, max_records=50, max_record_bytes=2048)


def record(sequence: int, value: object, kind: str = "PERIODICAL") -> bytes:
    return json.dumps({"sequence": sequence, "kind": kind, "value": value}).encode() + b"\n"


def test_records_become_metrics_in_sequence_order() -> None:
    data = record(1, 0.5) + record(0, 0.25) + record(2, {"default": 0.9, "loss": 0.1}, "FINAL")
    read = parse_results(data, LIMITS, complete=True)
    assert read.problems == []
    assert [(m.sequence, m.kind, m.value) for m in read.metrics] == [
        (0, MetricKind.PERIODICAL, 0.25), (1, MetricKind.PERIODICAL, 0.5), (2, MetricKind.FINAL, 0.9)]
    assert read.metrics[2].raw == {"default": 0.9, "loss": 0.1}
    assert read.consumed == len(data)


def test_a_repeated_append_counts_once_silently_but_a_changed_one_is_named() -> None:
    read = parse_results(record(0, 0.5) * 2, LIMITS, complete=True)
    assert (len(read.metrics), read.problems) == (1, [])
    read = parse_results(record(0, 0.5) + record(0, 0.7), LIMITS, complete=True)
    assert [m.value for m in read.metrics] == [0.5]
    assert "sequence 0 reported twice" in read.problems[0]


@pytest.mark.parametrize(("line", "says"), [
    (b'{"sequence":0,"kind":"FINAL","value":1' + b"0" * 400 + b"}", "too large for a float"),
    (b'{"sequence":0,"kind":"FINAL","value":1' + b"0" * 5000 + b"}", "not JSON"),  # int digit limit
    (b'{"sequence":0,"kind":"FINAL","value":NaN}', "not finite"),
    (b'{"sequence":0,"kind":"FINAL","value":-Infinity}', "not finite"),
    (b'{"sequence":0,"kind":"FINAL","value":1e400}', "not finite"),
    (b'{"sequence":0,"kind":"FINAL","value":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "bytes, over"),
    (b'{"sequence":0,"kind":"FINAL","value":{"default":1,"x":' + b"[" * 600 + b"]" * 600 + b"}}",
     "nests deeper"),
    (b"[" * 1500 + b"]" * 1500, "nested too deeply"),
    (b"[1, 2]", "expected a JSON object"),
    ('{"sequence":"²³","kind":"FINAL","value":1}'.encode(), "sequence must be an int"),
    ('{"sequence":0,"kind":"FINAL","value":"٣"}'.encode(), "must be a number"),
    (b'{"sequence":true,"kind":"FINAL","value":1}', "sequence must be an int"),
    (b'{"sequence":99999999,"kind":"FINAL","value":1}', "sequence must be an int"),
    (b'{"sequence":0,"kind":["FINAL"],"value":1}', "kind must be"),
    (b'{"sequence":0,"kind":"FINAL","value":true}', "must be a number"),
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b"not json at all", "not JSON"),
])
def test_hostile_records_are_named_problems(line: bytes, says: str) -> None:
    limits = ResultsLimits(max_bytes=1024 * 1024, max_records=50, max_record_bytes=128 * 1024)
    if b"[" * 100_000 in line:
        limits = LIMITS  # the record-size cap is what stops this one
    read = parse_results(line + b"\n", limits, complete=True)
    assert read.metrics == []
    assert len(read.problems) == 1 and says in read.problems[0], read.problems
    assert "results record at byte 0" in read.problems[0]


def test_deep_nesting_inside_the_record_size_never_raises() -> None:
    line = b'{"sequence":0,"kind":"FINAL","value":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    read = parse_results(line + b"\n", ResultsLimits(max_record_bytes=128 * 1024), complete=True)
    assert read.metrics == [] and len(read.problems) == 1


def test_too_many_records_are_cut_with_one_problem() -> None:
    data = b"".join(record(i % 50, float(i)) for i in range(60))
    read = parse_results(data, ResultsLimits(max_records=10), complete=True)
    assert len(read.metrics) == 10
    assert read.problems == ["more than 10 results records: the rest were ignored"]


def test_a_second_final_is_named_and_the_first_counts() -> None:
    read = parse_results(record(0, 0.1, "FINAL") + record(1, 0.9, "FINAL"), LIMITS, complete=True)
    assert [m.value for m in read.metrics] == [0.1]
    assert "second FINAL" in read.problems[0]


def test_an_oversized_blob_is_named() -> None:
    read = parse_results(record(0, 0.5), LIMITS, complete=True, total_size=10 * LIMITS.max_bytes)
    assert [m.value for m in read.metrics] == [0.5]
    assert "only the first" in read.problems[0]


def test_a_watch_stops_at_the_last_whole_line_and_the_end_reads_the_rest() -> None:
    data = record(0, 0.5) + b'{"sequence":1,"kind":"PERI'
    running = parse_results(data, LIMITS, complete=False)
    assert [m.sequence for m in running.metrics] == [0] and running.problems == []
    assert running.consumed == len(record(0, 0.5))
    ended = parse_results(data, LIMITS, complete=True)
    assert len(ended.problems) == 1
    assert "not JSON" in ended.problems[0] and f"byte {running.consumed}" in ended.problems[0]


def test_base_offset_is_named_in_problems() -> None:
    read = parse_results(b"junk\n", LIMITS, complete=True, base_offset=1000)
    assert "byte 1000" in read.problems[0]


def _random_json(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(8 if depth < 4 else 5)
    leaves = [None, True, rng.randint(-10 ** 400, 10 ** 400), rng.random() * 10.0 ** rng.randint(-5, 300),
              rng.choice([float("nan"), float("inf"), "x", "٣", ""])]
    if pick < 5:
        return leaves[pick]
    if pick == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = ["default", "a", "b"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(3))}


def test_any_bytes_end_as_metrics_or_problems() -> None:
    rng = random.Random(8)
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(2048)))
        data += b"\n".join(record(rng.randrange(60), _random_json(rng)) for _ in range(rng.randrange(3)))
        read = parse_results(data, LIMITS, complete=rng.random() < 0.5)
        lines = [line for line in data.split(b"\n") if line]
        assert len(read.metrics) + len(read.problems) <= len(lines) + 1
        assert all(len(p) < 400 for p in read.problems), "problems quote at most a bounded excerpt"


def test_any_json_value_ends_as_a_metric_or_a_problem() -> None:
    rng = random.Random(9)
    for _ in range(500):
        value = _random_json(rng)
        read = parse_results(json.dumps({"sequence": 0, "kind": "FINAL", "value": value}).encode() + b"\n",
                             ResultsLimits(max_record_bytes=1024 * 1024), complete=True)
        assert len(read.metrics) + len(read.problems) == 1, value
