"""The message bus on aio-pika: connect, declare, publish with confirms, consume validated.

Handlers are plain ``async def handle(msg: SomeMessage) -> None`` functions; the bus acks a
delivery only after its handler returned, that is, after its effects are durable. What fails
is retried later or dead-lettered; the service keeps running. The rooms: :mod:`.connection`
(connecting, declaring, publishing, dead letters), :mod:`.consuming` (:class:`Bus`),
:mod:`.parsing`, :mod:`.retries`, :mod:`.draining` (queues the shards replaced), :mod:`.errors`.
"""

from shared.bus.connection import PUBLISH_CONFIRM_TIMEOUT, REASON_HEADER, without_secrets
from shared.bus.consuming import Bus, Consumption, Handler, KeyedLocks, end_turn
from shared.bus.errors import PermanentError, TransientError
from shared.bus.parsing import MAX_BODY_BYTES, parse_message
from shared.bus.retries import TRANSIENT_RETRY_SECONDS, UNEXPECTED_RETRIES, retry_budget_spent, retry_delay

__all__ = [
    "MAX_BODY_BYTES",
    "PUBLISH_CONFIRM_TIMEOUT",
    "REASON_HEADER",
    "TRANSIENT_RETRY_SECONDS",
    "UNEXPECTED_RETRIES",
    "Bus",
    "Consumption",
    "Handler",
    "KeyedLocks",
    "PermanentError",
    "TransientError",
    "end_turn",
    "parse_message",
    "retry_budget_spent",
    "retry_delay",
    "without_secrets",
]
