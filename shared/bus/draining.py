"""Moving what waits in queues the shards replaced (the single queue before them, shards beyond
the present count) into the shards, so an upgrade or a scale-down loses no message."""

from __future__ import annotations

import contextlib
import json
import logging

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.bus.connection import PUBLISH_CONFIRM_TIMEOUT
from shared.topology import EXPERIMENT_HEADER, QueueSpec, ShardedQueues

__all__ = ["drain_legacy_queue"]

log = logging.getLogger(__name__)

# Draining a queue the shards replaced stops once it has delivered nothing for this long.
LEGACY_IDLE_SECONDS = 2.0


async def drain_legacy_queue(connection: AbstractRobustConnection, legacy: QueueSpec,
                             sharded: ShardedQueues) -> int:
    """Move what waits in a queue the shards replaced into the shards, then delete it.

    Left alone while it still has consumers (replicas of the earlier version): the last of
    them to go, or the next start, drains it. Returns how many messages were moved.
    """
    channel = await connection.channel(publisher_confirms=True)
    try:
        try:
            queue = await channel.declare_queue(legacy.name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0  # never there, or drained before
        if queue.declaration_result.consumer_count:
            log.warning("%s still has consumers (earlier replicas): not drained yet", legacy.name)
            return 0
        for key in legacy.bindings:
            await queue.unbind(legacy.exchange, routing_key=key)
        target = await channel.get_exchange(sharded.exchange, ensure=False)
        moved = 0
        await channel.set_qos(prefetch_count=1)
        # Consumed, not fetched: a quorum queue with a single active consumer refuses basic.get.
        with contextlib.suppress(TimeoutError):
            async with queue.iterator(timeout=LEGACY_IDLE_SECONDS) as deliveries:
                async for delivery in deliveries:
                    await target.publish(_moved(delivery), routing_key=delivery.routing_key or "",
                                         timeout=PUBLISH_CONFIRM_TIMEOUT)
                    await delivery.ack()
                    moved += 1
        # Unbound before it was drained, so nothing can arrive now; quorum queues take no if-empty.
        left = await channel.declare_queue(legacy.name, passive=True)
        if left.declaration_result.message_count == 0:
            await queue.delete(if_unused=False, if_empty=False)
        log.info("drained %d messages of %s into %s", moved, legacy.name, sharded.exchange)
        return moved
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


def _moved(delivery: AbstractIncomingMessage) -> aio_pika.Message:
    """A copy of a legacy queue's delivery with its experiment id in the shards' header."""
    headers = dict(delivery.headers or {})
    if EXPERIMENT_HEADER not in headers:
        with contextlib.suppress(Exception):  # not JSON: the shard it lands in dead-letters it
            headers[EXPERIMENT_HEADER] = str(json.loads(delivery.body)["experiment_id"])[:64]
    headers.setdefault(EXPERIMENT_HEADER, "")
    return aio_pika.Message(delivery.body, content_type=delivery.content_type,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=delivery.message_id, type=delivery.type, headers=headers)
