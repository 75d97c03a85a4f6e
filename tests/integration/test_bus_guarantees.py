"""What the README promises of the bus, against a real RabbitMQ: a consumer handling one message at
a time (the dispatcher) sees them in the order published; a body over 1 MiB is dead-lettered at
once; a dependency that is down is retried for a time budget (about 30 minutes), not a count;
the AML watch and kill queues dead-letter what does not validate, as every queue does.

Every wait is for an event (a handler's call, a dead letter's arrival), bounded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aio_pika
import aio_pika.abc
import pytest

from shared.bus import (
    MAX_BODY_BYTES,
    TRANSIENT_RETRY_SECONDS,
    Bus,
    TransientError,
    retry_budget_spent,
)
from shared.messages import Message, SuggestRequest, Ticket, TrialKill, TrialStatus
from shared.topology import (
    AML_KILL_QUEUE,
    AML_WATCH_QUEUE,
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    TUNER_QUEUE,
    QueueSpec,
)

pytestmark = pytest.mark.integration

WAIT = 60.0  # generous: a loaded 2-core CI machine


async def _dead_letter(url: str) -> aio_pika.abc.AbstractIncomingMessage:
    """The next dead letter in the vhost (acked), as soon as it arrives."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(DEAD_LETTER_QUEUE)
        async with queue.iterator() as letters:
            message = await asyncio.wait_for(anext(letters), timeout=WAIT)
            await message.ack()
            return message


async def test_one_at_a_time_messages_are_handled_in_the_order_published(amqp_vhost: str) -> None:
    """As the dispatcher consumes (prefetch 32, one handler at a time): a handler that takes longer
    for earlier messages still sees them all in publish order, each once."""
    bus = Bus(amqp_vhost, service="test")
    await bus.connect()
    count = 40
    handled: list[int] = []
    all_handled = asyncio.Event()

    async def on_suggest(msg: SuggestRequest) -> None:
        pid = msg.parameter_ids[0]
        await asyncio.sleep(0.02 * (3 - pid % 4))  # earlier ones of each four take longer
        handled.append(pid)
        if len(handled) == count:
            all_handled.set()

    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest}, prefetch=32, concurrency=1)
        for pid in range(count):
            await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[pid]))
        await asyncio.wait_for(all_handled.wait(), timeout=WAIT)
    finally:
        await bus.close()
    assert handled == list(range(count))


async def test_a_body_over_1_mib_is_dead_lettered_at_once_and_the_next_is_handled(amqp_vhost: str) -> None:
    bus = Bus(amqp_vhost, service="test")
    await bus.connect()
    handled = asyncio.get_running_loop().create_future()

    async def on_suggest(msg: SuggestRequest) -> None:
        handled.set_result(msg.parameter_ids)

    # Valid JSON, so only its size is wrong.
    padding = MAX_BODY_BYTES - len(b'{"experiment_id": "e1", "parameter_ids": [1], "x": ""}') + 1
    oversized = b'{"experiment_id": "e1", "parameter_ids": [1], "x": "' + b" " * padding + b'"}'
    assert len(oversized) == MAX_BODY_BYTES + 1
    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest})
        connection = await aio_pika.connect(amqp_vhost, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            events = await channel.get_exchange(EVENTS_EXCHANGE)
            await events.publish(aio_pika.Message(oversized), routing_key="suggest.request")
        letter = await _dead_letter(amqp_vhost)
        await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[2]))
        assert await asyncio.wait_for(handled, timeout=WAIT) == [2]
    finally:
        await bus.close()
    reason = str((letter.headers or {})["x-tunebus-reason"])
    assert f"body of {MAX_BODY_BYTES + 1} bytes is over the limit of {MAX_BODY_BYTES}" in reason, reason
    assert letter.routing_key == "suggest.request"


async def test_a_dependency_that_stays_down_is_retried_for_the_time_budget_not_a_count(
        amqp_vhost: str) -> None:
    """With a budget of 1.5 s (delays 0.2, 1, then 5 s would pass it): three calls, then the dead
    letter with the last error, although the retry count for other errors would allow 100."""
    bus = Bus(amqp_vhost, service="test", unexpected_retries=100, transient_retry_seconds=1.5)
    await bus.connect()
    calls: list[float] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        calls.append(asyncio.get_running_loop().time())
        raise TransientError("storage is down")

    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest})
        await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[3]))
        letter = await _dead_letter(amqp_vhost)
    finally:
        await bus.close()
    assert len(calls) == 3
    reason = str((letter.headers or {})["x-tunebus-reason"])
    assert reason.startswith("failed 3 times, last: TransientError: storage is down"), reason


def test_the_default_transient_budget_is_about_30_minutes() -> None:
    """README: a dependency that is down is retried for about 30 minutes."""
    attempt = 1
    while retry_budget_spent(attempt) <= TRANSIENT_RETRY_SECONDS:
        attempt += 1
    waited = retry_budget_spent(attempt - 1)  # in all, before the message is dead-lettered
    assert 25 * 60 <= waited <= 31 * 60, waited


# A body that does not validate on each AML queue's routing key, the field its reason names, and a
# valid message after it (handled: the consumer goes on).
AML_QUEUES = [
    pytest.param(AML_WATCH_QUEUE, "ticket.aml.watch",
                 b'{"experiment_id": "e1", "purpose": "aml.watch", "trial_id": "t1", "due": "soon"}', "due",
                 Ticket(experiment_id="e1", purpose="aml.watch", trial_id="t1", due=datetime.now(UTC)),
                 id="aml-watch"),
    pytest.param(AML_KILL_QUEUE, "trial.kill",
                 b'{"experiment_id": "e1", "trial_id": "t1", "status": "EXPLODED"}', "status",
                 TrialKill(experiment_id="e1", trial_id="t1", status=TrialStatus.USER_CANCELED, reason="t"),
                 id="aml-kill"),
]


@pytest.mark.parametrize(("spec", "routing_key", "body", "field", "valid"), AML_QUEUES)
async def test_the_aml_queues_dead_letter_what_does_not_validate(
        amqp_vhost: str, spec: QueueSpec, routing_key: str, body: bytes, field: str, valid: Message) -> None:
    bus = Bus(amqp_vhost, service="test")
    await bus.connect()
    handled = asyncio.get_running_loop().create_future()

    async def on_message(msg: Message) -> None:
        handled.set_result(msg)

    try:
        await bus.consume(spec, {type(valid): on_message})
        connection = await aio_pika.connect(amqp_vhost, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            events = await channel.get_exchange(EVENTS_EXCHANGE)
            await events.publish(aio_pika.Message(body), routing_key=routing_key)
        letter = await _dead_letter(amqp_vhost)
        await bus.publish(valid)
        assert (await asyncio.wait_for(handled, timeout=WAIT)).message_id == valid.message_id
    finally:
        await bus.close()
    headers = letter.headers or {}
    assert (letter.routing_key, headers["x-tunebus-queue"]) == (routing_key, spec.name)
    reason = str(headers["x-tunebus-reason"])
    assert f"invalid {type(valid).__name__}" in reason and field in reason, reason
    assert letter.body == body
