"""Each service's queue is bound to exactly the routing keys its handler table takes: a message
routed to a queue with no handler would be dead-lettered, a handler whose key is not bound would
never be called."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.aml_submitter.service import Submitter, _handlers
from services.dispatcher.lifecycle import Policy
from services.dispatcher.service import Dispatcher
from services.metric_ingestor.service import Ingestor
from services.tuner.service import TunerService
from shared.messages import Message, Ticket
from shared.topology import DISPATCHER_SHARDS, INGESTOR_QUEUE, SUBMIT_QUEUE, TUNER_SHARDS, QueueSpec


def _keys(handled: dict[type[Message], Any], queue: QueueSpec) -> set[str]:
    """The routing keys a handler table takes; a Ticket handler takes the queue's ticket keys."""
    keys = {cls.ROUTING_KEY for cls in handled if cls is not Ticket}
    if Ticket in handled:
        tickets = {key for key in queue.bindings if key.startswith("ticket.")}
        assert tickets, f"{queue.name} has a Ticket handler but no ticket binding"
        keys |= tickets
    return keys


def _tables() -> list[tuple[QueueSpec, dict[type[Message], Any]]]:
    return [
        # A sharded service's routing keys are its hash exchange's bindings (every shard gets them).
        (QueueSpec(DISPATCHER_SHARDS.exchange, DISPATCHER_SHARDS.bindings),
         Dispatcher(None, None, Policy(), 8).handlers()),  # type: ignore[arg-type]
        (QueueSpec(TUNER_SHARDS.exchange, TUNER_SHARDS.bindings), TunerService(None, None).handlers()),  # type: ignore[arg-type]
        (INGESTOR_QUEUE, Ingestor(None, None, 1.0).handlers()),  # type: ignore[arg-type]
        (SUBMIT_QUEUE, _handlers(Submitter(None, None, Path("unused"), "r"))),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize(("queue", "handled"), _tables(), ids=lambda v: getattr(v, "name", ""))
def test_a_queue_is_bound_to_what_its_service_handles(queue: QueueSpec,
                                                      handled: dict[type[Message], Any]) -> None:
    assert _keys(handled, queue) == set(queue.bindings)
