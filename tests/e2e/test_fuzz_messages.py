"""Hostile traffic on every queue: the services stay up, a real experiment still ends, and no
message is retried for ever.

Hypothesis generates the bodies (seeded, so a failure replays): messages of every type with
fields replaced by any JSON (huge numbers, NaN, deep nesting, wrong types), any bytes, and
tickets for experiments that do not exist. They are published raw on the events exchange, with
each queue's routing keys, while an experiment runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared.messages import ExperimentStart, ExperimentStatus, Message, Ticket, TrialStatus, message_types
from shared.topology import DELAY_QUEUES, EVENTS_EXCHANGE, QUEUES, SHARDED, event_routing_keys
from tests.e2e.conftest import Stack, publish, wait_finished

pytestmark = pytest.mark.e2e

EXAMPLES = 250
ROUTING_KEYS = sorted(event_routing_keys())
WORK_QUEUES = [spec.name for spec in QUEUES if spec.exchange == EVENTS_EXCHANGE and not spec.exclusive] + [
    spec.name for sharded in SHARDED for spec in sharded.queues()]

json_leaf = st.one_of(
    st.none(), st.booleans(), st.text(max_size=30),
    st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["²³", "9999-12-31T23:59:59Z", "0001-01-01", "local", "aml", "NaN", "\u0000"]),
)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def _skeleton(cls: type[Message]) -> dict[str, Any]:
    """A body with every required field of ``cls`` present, of roughly the right JSON type."""
    schema = cls.model_json_schema()
    placeholder = {"string": "x", "integer": 1, "number": 0.5, "boolean": False, "object": {}, "array": [1]}
    body: dict[str, Any] = {"experiment_id": "fuzz"}
    for name in schema.get("required", []):
        prop = schema["properties"][name]
        kinds = [prop.get("type"), *(a.get("type") for a in prop.get("anyOf", []))]
        kind = next((k for k in kinds if k), "string")
        body[name] = prop["enum"][0] if "enum" in prop else placeholder.get(kind, "x")
    return body


def _mutated(key: str) -> st.SearchStrategy[bytes]:
    cls = Ticket if key.startswith("ticket.") else message_types()[key]
    base = _skeleton(cls)
    if key.startswith("ticket."):
        base.update(purpose=key.removeprefix("ticket."), due="2026-01-01T00:00:00Z")
    fields = sorted({*base, *cls.model_fields})
    changes = st.dictionaries(st.sampled_from(fields), json_value, max_size=3)
    experiment = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=12).map(lambda s: f"fuzz-{s}")
    return st.builds(lambda c, e: json.dumps({**base, "experiment_id": e, **c}).encode(), changes, experiment)


deep = st.integers(min_value=1000, max_value=50_000).map(lambda n: b"[" * n + b"]" * n)
body_for_key = st.sampled_from(ROUTING_KEYS).flatmap(
    lambda key: st.tuples(st.just(key), st.one_of(_mutated(key), st.binary(max_size=200), deep)))


def _examples() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    @settings(max_examples=EXAMPLES, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(body_for_key)
    def collect(example: tuple[str, bytes]) -> None:
        out.append(example)

    collect()
    return out


async def _queue_depths(url: str) -> dict[str, int]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        depths = {}
        for name in [*WORK_QUEUES, *(q.name for q in DELAY_QUEUES)]:
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = queue.declaration_result.message_count
        return depths


async def test_fuzzed_messages_on_every_queue_leave_the_services_up_and_an_experiment_ending(
        stack: Stack) -> None:
    examples = _examples()
    assert len(examples) >= EXAMPLES * 0.9 and {k for k, _ in examples} == set(ROUTING_KEYS)
    config = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 -c \"import nni; nni.report_final_result(nni.get_next_parameter()['x'])\"",
        "trialConcurrency": 2, "maxTrialNumber": 8,
        "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
    }
    await publish(stack, ExperimentStart(experiment_id="fuzzlive", config=config))
    connection = await aio_pika.connect(stack.env["TUNEBUS_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        for key, body in examples:
            await exchange.publish(aio_pika.Message(body, content_type="application/json"), routing_key=key)

    state = await wait_finished(stack, "fuzzlive", timeout=180)
    assert state.status == ExperimentStatus.DONE, state.reason
    assert state.trials_by_status() == {TrialStatus.SUCCEEDED.value: 8}
    for service, procs in stack.procs.items():
        assert all(p.poll() is None for p in procs), f"{service} died:\n{stack.logs()}"

    # Nothing circles for ever: bounded retries end in the dead-letter queue, so every work
    # queue and every delay queue empties (within the retries' budget for unexpected errors).
    deadline = time.monotonic() + 120
    depths = await _queue_depths(stack.env["TUNEBUS_AMQP_URL"])
    while any(depths.values()) and time.monotonic() < deadline:
        await asyncio.sleep(1)
        depths = await _queue_depths(stack.env["TUNEBUS_AMQP_URL"])
    assert not any(depths.values()), f"still queued: {depths}\n{stack.logs()}"
