"""What the bus does with a delivery it could not handle: retry it later, or dead-letter it.

A failed delivery is acked and a copy parked in a delay queue (the ones tickets use), so the
consumer goes on at once and other experiments never wait behind it. The copy comes back to
its own queue alone (``x-tunebus-retry-for``) with its attempt count; past its budget it is
dead-lettered with the last error. The quorum queues' delivery limit stays the guard against
a consumer that dies handling one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from shared.bus.connection import PUBLISH_CONFIRM_TIMEOUT
from shared.bus.errors import TransientError
from shared.topology import DELAY_BUCKETS, DELAY_HEADER, QueueSpec, delay_bucket_for, delay_queue_name

if TYPE_CHECKING:  # consuming imports this module
    from shared.bus.consuming import Bus

__all__ = [
    "RETRY_FOR_HEADER",
    "TRANSIENT_RETRY_SECONDS",
    "UNEXPECTED_RETRIES",
    "retry_budget_spent",
    "retry_delay",
    "retry_later",
]

log = logging.getLogger(__name__)

RETRY_FOR_HEADER = "x-tunebus-retry-for"
RETRY_ATTEMPT_HEADER = "x-tunebus-attempt"
# Retries of a message whose handler raised TransientError: about half an hour in all.
TRANSIENT_RETRY_SECONDS = 1800.0
# Retries of a message whose handler raised anything else (a defect, unforeseen content).
UNEXPECTED_RETRIES = 4


def retry_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): 0.2, 1, 5, then 30 s each time."""
    return DELAY_BUCKETS[min(attempt, len(DELAY_BUCKETS)) - 1]


def retry_budget_spent(attempt: int) -> float:
    """Seconds waited in all before retry ``attempt``."""
    return sum(retry_delay(a) for a in range(1, attempt + 1))


async def retry_later(bus: Bus, spec: QueueSpec, delivery: AbstractIncomingMessage,
                      exc: Exception) -> None:
    """Park a copy of a delivery that failed for now; dead-letter it once it has failed enough.

    A :class:`TransientError` (a dependency is down) or a connection error is retried for about
    ``bus.transient_retry_seconds``; any other exception (a defect, or content no check caught)
    only ``bus.unexpected_retries`` times.
    """
    key = delivery.routing_key or ""
    # x-death and friends record each trip through a delay queue: not carried on.
    headers = {k: v for k, v in (delivery.headers or {}).items() if not k.startswith("x-") or
               k in (RETRY_ATTEMPT_HEADER,)}
    attempt = _int(headers.get(RETRY_ATTEMPT_HEADER)) + 1
    # A dependency that cannot be reached (storage restarting, the broker away, a channel it
    # closed and that is being reopened) may come back.
    transient = isinstance(exc, (TransientError, ConnectionError, TimeoutError,
                                 aio_pika.exceptions.AMQPConnectionError,
                                 aiormq.exceptions.ChannelInvalidStateError))
    delay = retry_delay(attempt)
    exhausted = (retry_budget_spent(attempt) > bus.transient_retry_seconds if transient
                 else attempt > bus.unexpected_retries)
    log.warning("handler for %s failed (attempt %d)%s: %r", key, attempt,
                "" if exhausted else f", again in {delay:g} s", exc, exc_info=not transient)
    if exhausted:
        reason = f"failed {attempt} times, last: {type(exc).__name__}: {exc}"
        await bus.dead_letter(key, delivery.body, reason, spec.name)
        await delivery.ack()
        return
    delay_exchange = bus.delay_exchange()
    headers.update({RETRY_FOR_HEADER: spec.name, RETRY_ATTEMPT_HEADER: attempt,
                    DELAY_HEADER: delay_queue_name(delay_bucket_for(delay))})
    try:
        await delay_exchange.publish(
            aio_pika.Message(delivery.body, content_type=delivery.content_type,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=delivery.message_id, type=delivery.type, headers=headers),
            routing_key=key, timeout=PUBLISH_CONFIRM_TIMEOUT,
        )
    except Exception:  # the broker is going away: let it redeliver
        with contextlib.suppress(Exception):
            await delivery.nack(requeue=True)
        return
    await delivery.ack()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
