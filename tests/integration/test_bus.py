"""The bus helper against a real RabbitMQ: delays, dead letters, retries, order."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from shared.bus import Bus, PermanentError
from shared.messages import SuggestRequest, Ticket
from shared.topology import DEAD_LETTER_QUEUE, DELAY_QUEUES, INGESTOR_QUEUE, TUNER_QUEUE

pytestmark = pytest.mark.integration


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
        await asyncio.sleep(4)
    finally:
        await bus.close()
    assert [t.message_id for _, t in seen] == [ticket.message_id]
    assert 1.4 <= seen[0][0] - started <= 3.5
    assert all(not q.binding_arguments or not any(k.startswith("x-") and k != "x-match"
                                                  for k in q.binding_arguments) for q in DELAY_QUEUES)


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
            await asyncio.sleep(1.0)
            queue = await channel.get_queue(DEAD_LETTER_QUEUE)
            reasons = []
            while (message := await queue.get(fail=False)) is not None:
                await message.ack()
                reasons.append(str(message.headers["x-tunebus-reason"]))
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
