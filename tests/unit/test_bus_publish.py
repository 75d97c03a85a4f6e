"""Bus.publish's retries and a failed handler's retry, against a channel that fails as a broker's does."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.exceptions
import pytest

from shared.bus import Bus, TransientError
from shared.bus import connection as bus_connection
from shared.bus.retries import RETRY_ATTEMPT_HEADER, UNEXPECTED_RETRIES, retry_later
from shared.messages import ExperimentStatus, ExperimentStatusChanged
from shared.topology import TUNER_QUEUE

REFUSED = aiormq.exceptions.ChannelAccessRefused(
    "ACCESS_REFUSED - access to topic 'experiment.status' in exchange 'tunebus.events' refused")


class FailingExchange:
    """Raises the given errors in turn, then confirms."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.published = 0

    async def publish(self, message: Any, routing_key: str, **kwargs: Any) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.published += 1


def bus_with(exchange: FailingExchange, monkeypatch: pytest.MonkeyPatch) -> Bus:
    monkeypatch.setattr(bus_connection.asyncio, "sleep", _no_sleep)
    bus = Bus("amqp://127.0.0.1:1/", service="test")
    bus._events = exchange  # type: ignore[assignment]
    return bus


_real_sleep = asyncio.sleep


async def _no_sleep(delay: float) -> None:
    await _real_sleep(0)


STATUS = ExperimentStatusChanged(experiment_id="e1", status=ExperimentStatus.DONE)


async def test_a_refused_publish_whose_channel_then_closes_raises_transient_naming_the_refusal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker closes a channel that published where it may not: the next try meets the
    closed channel (aiormq's ChannelInvalidStateError, no AMQPError) until it is reopened."""
    closed = aiormq.exceptions.ChannelInvalidStateError("<RobustChannel> closed")
    bus = bus_with(FailingExchange(REFUSED, REFUSED, closed), monkeypatch)
    with pytest.raises(TransientError, match="ACCESS_REFUSED"):
        await bus.publish(STATUS)


async def test_a_channel_closed_for_a_moment_is_published_on_again(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = aiormq.exceptions.ChannelInvalidStateError("<RobustChannel> closed")
    exchange = FailingExchange(closed)
    await bus_with(exchange, monkeypatch).publish(STATUS)
    assert exchange.published == 1


class _Delivery:
    def __init__(self, attempt: int) -> None:
        self.routing_key = "trial.ended"
        self.body = b"{}"
        self.headers = {RETRY_ATTEMPT_HEADER: attempt}
        self.content_type = "application/json"
        self.message_id = "m1"
        self.type = "TrialEnded"
        self.acked = False

    async def ack(self) -> None:
        self.acked = True

    async def nack(self, requeue: bool = True) -> None:
        raise AssertionError("not nacked")


class _RetryBus:
    transient_retry_seconds = 1800.0
    unexpected_retries = 4

    def __init__(self) -> None:
        self.parked: list[Any] = []
        self.dead: list[str] = []
        exchange = self

        class _Exchange:
            async def publish(self, message: Any, routing_key: str, **kwargs: Any) -> None:
                exchange.parked.append(message)

        self._exchange = _Exchange()

    def delay_exchange(self) -> Any:
        return self._exchange

    async def dead_letter(self, routing_key: str, body: bytes, reason: str, queue: str) -> None:
        self.dead.append(reason)


async def test_a_handler_failing_on_a_closed_channel_is_retried_as_transient() -> None:
    """A handler's own publish (a ticket, a dead letter) met a channel being reopened: the
    broker is coming back, so it is retried for the transient budget, not the 4 of a defect."""
    bus = _RetryBus()
    delivery = _Delivery(attempt=UNEXPECTED_RETRIES)  # the next failure is past a defect's budget
    closed = aiormq.exceptions.ChannelInvalidStateError("<RobustChannel> closed")
    await retry_later(bus, TUNER_QUEUE, delivery, closed)  # type: ignore[arg-type]
    assert bus.dead == [] and len(bus.parked) == 1 and delivery.acked
