"""Bus.publish's retries, against an exchange that fails as a broker's channel does."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.exceptions
import pytest

from shared.bus import Bus, TransientError
from shared.bus import connection as bus_connection
from shared.messages import ExperimentStatus, ExperimentStatusChanged

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
