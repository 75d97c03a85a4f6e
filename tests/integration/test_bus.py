"""The bus helper against a real RabbitMQ: delays, dead letters, retries, order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from shared.bus import Bus, PermanentError, TransientError
from shared.messages import SuggestRequest, Ticket, TrialEnded, TrialStatus
from shared.topology import DEAD_LETTER_QUEUE, DELAY_QUEUES, DISPATCHER_QUEUE, INGESTOR_QUEUE, TUNER_QUEUE

pytestmark = pytest.mark.integration


async def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait for ``condition`` (an event the test can see), bounded generously."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


async def _bus(url: str) -> Bus:
    bus = Bus(url, service="test")
    await bus.connect()
    return bus


async def test_a_delayed_ticket_comes_back_once_and_not_before_it_is_due(amqp_vhost: str) -> None:
    bus = await _bus(amqp_vhost)
    seen: list[tuple[float, Ticket]] = []

    async def on_ticket(ticket: Ticket) -> None:
        if ticket.due > datetime.now(UTC):
            await bus.publish_ticket(ticket)  # early: park it again, as services do
            return
        seen.append((time.monotonic(), ticket))

    try:
        await bus.consume(INGESTOR_QUEUE, {Ticket: on_ticket}, concurrency=4)
        started = time.monotonic()
        ticket = Ticket(experiment_id="e1", purpose="ingest.watch", trial_id="t1",
                        due=datetime.now(UTC) + timedelta(seconds=1.5))
        await bus.publish_ticket(ticket)
        await _until(lambda: bool(seen), "the ticket back")
        # Once only: a duplicate parked by the early handling would come back within a second.
        await asyncio.sleep(1.5)
    finally:
        await bus.close()
    assert [t.message_id for _, t in seen] == [ticket.message_id]
    assert seen[0][0] - started >= 1.4  # never before it is due (how late depends on the machine's load)
    assert all(not q.binding_arguments or not any(k.startswith("x-") and k != "x-match"
                                                  for k in q.binding_arguments) for q in DELAY_QUEUES)

async def test_a_ticket_published_like_any_message_waits_in_a_delay_queue_until_it_is_due(
        amqp_vhost: str) -> None:
    """The dispatcher publishes its next tick with the rest of a change's messages: not yet due,
    it must go to a delay queue at once, not to the consumer first (which would park it itself:
    a second publish and a second delivery for every tick)."""
    bus = await _bus(amqp_vhost)
    deliveries: list[tuple[float, Ticket]] = []

    async def on_ticket(ticket: Ticket) -> None:
        deliveries.append((time.monotonic(), ticket))

    try:
        await bus.consume(INGESTOR_QUEUE, {Ticket: on_ticket}, concurrency=4)
        started = time.monotonic()
        due = Ticket(experiment_id="e1", purpose="ingest.watch", trial_id="now", due=datetime.now(UTC))
        later = Ticket(experiment_id="e1", purpose="ingest.watch", trial_id="later",
                       due=datetime.now(UTC) + timedelta(seconds=1.0))  # a delay bucket's length
        await bus.publish_many([later, due])
        await _until(lambda: len(deliveries) == 2, "both tickets")
        await asyncio.sleep(0.5)  # nothing more comes
    finally:
        await bus.close()
    assert [t.trial_id for _, t in deliveries] == ["now", "later"]
    assert deliveries[0][0] - started < 1.0  # a due ticket goes straight to its consumer
    assert deliveries[1][0] - started >= 0.95  # the other was not delivered before it was due



async def test_bad_messages_are_dead_lettered_with_reason_and_consumption_goes_on(amqp_vhost: str) -> None:
    bus = await _bus(amqp_vhost)
    handled: list[list[int]] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        if msg.parameter_ids == [13]:
            raise PermanentError("thirteen is not allowed")
        handled.append(msg.parameter_ids)

    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest})
        await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[13]))
        connection = await aio_pika.connect(amqp_vhost)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("tunebus.events")
            await exchange.publish(aio_pika.Message(b"{oops"), routing_key="suggest.request")
            await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[1]))
            queue = await channel.get_queue(DEAD_LETTER_QUEUE)
            reasons: list[str] = []
            deadline = time.monotonic() + 30
            while len(reasons) < 2 and time.monotonic() < deadline:
                message = await queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                reasons.append(str(message.headers["x-tunebus-reason"]))
            await _until(lambda: bool(handled), "the good message handled")
    finally:
        await bus.close()
    assert handled == [[1]]
    assert len(reasons) == 2
    assert any("thirteen" in r for r in reasons) and any("not JSON" in r for r in reasons)


async def test_a_failing_handler_is_retried_until_it_succeeds(amqp_vhost: str) -> None:
    bus = await _bus(amqp_vhost)
    handled: list[int] = []
    failures = {2: 1}  # message 2 fails once

    async def on_suggest(msg: SuggestRequest) -> None:
        pid = msg.parameter_ids[0]
        if failures.get(pid):
            failures[pid] -= 1
            raise ConnectionError("storage is down")
        handled.append(pid)

    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest})
        for pid in range(1, 6):
            await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[pid]))
        for _ in range(50):
            if len(handled) == 5:
                break
            await asyncio.sleep(0.1)
    finally:
        await bus.close()
    assert sorted(handled) == [1, 2, 3, 4, 5]  # each exactly once, the failed one too


async def _dead_letters(url: str, want: int,
                        timeout: float = 30.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The dead letters in the vhost, once there are ``want`` of them (or the bound passed)."""
    found: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(DEAD_LETTER_QUEUE)
        deadline = time.monotonic() + timeout
        while len(found) < want and time.monotonic() < deadline:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            found.append(message)
    return found


async def test_a_body_nested_too_deep_is_dead_lettered_at_once(amqp_vhost: str) -> None:
    bus = await _bus(amqp_vhost)
    handled: list[SuggestRequest] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        handled.append(msg)

    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest})
        connection = await aio_pika.connect(amqp_vhost)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("tunebus.events")
            await exchange.publish(aio_pika.Message(b"[" * 100_000 + b"]" * 100_000),
                                   routing_key="suggest.request")
            await exchange.publish(aio_pika.Message(b'{"experiment_id": "e1", "parameter_ids": [1e999999]}'),
                                   routing_key="suggest.request")
        await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[7]))
        letters = await _dead_letters(amqp_vhost, 2)
    finally:
        await bus.close()
    assert [m.parameter_ids for m in handled] == [[7]]
    reasons = sorted(str(m.headers["x-tunebus-reason"]) for m in letters)
    assert len(reasons) == 2
    assert any("RecursionError" in r for r in reasons), reasons
    assert any("parameter_ids" in r for r in reasons), reasons


async def test_a_message_that_fails_for_now_does_not_hold_up_the_next_one(amqp_vhost: str) -> None:
    # One consumer, strictly one message at a time (as the dispatcher and the tuner run): the
    # failed message waits in a delay queue while the next one is handled.
    bus = await _bus(amqp_vhost)
    handled: list[int] = []
    attempts: dict[int, int] = {}

    async def on_suggest(msg: SuggestRequest) -> None:
        pid = msg.parameter_ids[0]
        attempts[pid] = attempts.get(pid, 0) + 1
        if pid == 1 and attempts[pid] < 3:
            raise TransientError("storage is down")
        handled.append(pid)

    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest}, concurrency=1)
        for pid in (1, 2):
            await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[pid]))
        for _ in range(300):
            if len(handled) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await bus.close()
    assert handled == [2, 1]  # 2 did not wait for 1's retries
    assert attempts == {1: 3, 2: 1}


async def test_a_retry_goes_back_to_the_failing_queue_alone(amqp_vhost: str) -> None:
    # trial.ended reaches both the tuner's and the dispatcher's queue; a retry of the tuner's
    # copy must not hand the dispatcher a second one.
    bus = await _bus(amqp_vhost)
    tuner_calls: list[str] = []
    dispatcher_calls: list[str] = []

    async def tuner_on_ended(msg: TrialEnded) -> None:
        tuner_calls.append(msg.message_id)
        if len(tuner_calls) == 1:
            raise TransientError("not now")

    async def dispatcher_on_ended(msg: TrialEnded) -> None:
        dispatcher_calls.append(msg.message_id)

    try:
        await bus.consume(TUNER_QUEUE, {TrialEnded: tuner_on_ended})
        await bus.consume(DISPATCHER_QUEUE, {TrialEnded: dispatcher_on_ended})
        ended = TrialEnded(experiment_id="e1", trial_id="t1", parameter_id=0, status=TrialStatus.SUCCEEDED)
        await bus.publish(ended)
        for _ in range(200):
            if len(tuner_calls) == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a stray copy for the dispatcher would have arrived by now
    finally:
        await bus.close()
    assert tuner_calls == [ended.message_id, ended.message_id]
    assert dispatcher_calls == [ended.message_id]


async def test_a_handler_that_always_fails_is_dead_lettered_after_its_retries(amqp_vhost: str) -> None:
    bus = Bus(amqp_vhost, service="test", unexpected_retries=2)
    await bus.connect()
    calls: list[str] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        calls.append(msg.message_id)
        raise KeyError("a defect")

    try:
        await bus.consume(TUNER_QUEUE, {SuggestRequest: on_suggest})
        await bus.publish(SuggestRequest(experiment_id="e1", parameter_ids=[1]))
        letters = await _dead_letters(amqp_vhost, 1)
    finally:
        await bus.close()
    assert len(calls) == 3  # the first try and two retries
    assert len(letters) == 1
    reason = str(letters[0].headers["x-tunebus-reason"])
    assert "failed 3 times" in reason and "KeyError" in reason


async def test_debug_traces_each_publish_and_handling_with_its_trial(
        amqp_vhost: str, caplog: pytest.LogCaptureFixture) -> None:
    """TUNEBUS_LOG_LEVEL=DEBUG: a trial's path through the services can be read from their logs."""
    bus = await _bus(amqp_vhost)
    handled: list[str] = []

    async def on_ended(msg: TrialEnded) -> None:
        handled.append(msg.trial_id)

    caplog.set_level("DEBUG", logger="tunebus.trace")
    try:
        await bus.consume(DISPATCHER_QUEUE, {TrialEnded: on_ended})
        await bus.publish(TrialEnded(experiment_id="e9", trial_id="t7", parameter_id=0,
                                     status=TrialStatus.SUCCEEDED))
        await _until(lambda: handled == ["t7"], "the ended trial handled")
    finally:
        await bus.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "tunebus.trace"]
    assert any(line.startswith("published trial.ended e9/t7, confirmed in ") for line in lines), lines
    assert any(line.startswith("handled trial.ended e9/t7 in ") for line in lines), lines
