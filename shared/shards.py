"""Replicas of a sharded service (the dispatcher, the tuner) sharing its shards.

Details: :class:`ShardedConsumer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from shared.bus import Bus, Consumption, Handler
from shared.messages import Message
from shared.placement import LoadMeter, Plan, Planner, owner_of, parse_loads, parse_plan
from shared.topology import ShardedQueues, replicas_queue

__all__ = ["HEARTBEAT_SECONDS", "PEER_TIMEOUT_SECONDS", "STEP_BACK_COOLDOWN", "ShardedConsumer",
           "replica_name"]

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
#: A peer not heard from for this long is taken as gone (its shards are shared out again).
PEER_TIMEOUT_SECONDS = 4.0
#: The least time between two step-backs from one shard (each returns the deliveries in hand).
STEP_BACK_COOLDOWN = 5.0
MAX_REPLICA_NAME = 100

Release = Callable[[list[str]], Awaitable[None]]


def replica_name() -> str:
    """A name no other live replica has: host, process and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"[:MAX_REPLICA_NAME]


class ShardedConsumer:
    """Consumes all of a service's shards and keeps, with its peers, each shard on its owner.

    Every replica consumes every shard queue (:class:`shared.topology.ShardedQueues`); each queue
    has a single active consumer, so RabbitMQ itself hands a shard to a standby replica the moment
    its active one goes away (its connection closes), and an experiment's messages are handled by
    one replica at a time, in order.

    What a single active consumer does not do is spread the shards: the first replica to subscribe
    is active on all of them. So the replicas announce themselves (a small message every
    :data:`HEARTBEAT_SECONDS` on :data:`shared.topology.REPLICAS_EXCHANGE`, to every peer's own
    exclusive queue, with how busy each shard keeps them) and each sees the same set of live
    peers; the first of them, the leader, announces where each shard goes (:mod:`shared.placement`:
    by hash, then moved towards an even load). A replica *steps back* from a shard it does not
    own (when the set of peers or the plan changes, and when a shard it does not own delivers to
    it, at most once per :data:`STEP_BACK_COOLDOWN` per shard): it handles no more of that
    shard's deliveries, waits for those in hand, closes the shard's channel (the deliveries not
    handled go back to the queue, in order) and subscribes again, so it is now behind the owner
    in the queue's line of consumers, and the owner, or the next replica in line, becomes active.
    Versions of RabbitMQ from 3.12 would do this with consumer priorities; this works on 3.10
    (deploy/local) too.

    A replica that loses a shard forgets what it cached for the experiments it handled there
    (``on_release``): when the shard comes back to it later, other replicas will have changed
    them, so it loads them again from storage. Losing the broker connection forgets everything.
    """

    def __init__(self, bus: Bus, sharded: ShardedQueues, handlers: dict[type[Message], Handler], *,
                 prefetch: int, concurrency: int, on_release: Release, replica: str | None = None,
                 heartbeat: float = HEARTBEAT_SECONDS, peer_timeout: float = PEER_TIMEOUT_SECONDS,
                 cooldown: float = STEP_BACK_COOLDOWN, meter: LoadMeter | None = None,
                 planner: Planner | None = None) -> None:
        self.bus = bus
        self.sharded = sharded
        self.handlers = handlers
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.on_release = on_release
        self.replica = replica or replica_name()
        self.heartbeat = heartbeat
        self.peer_timeout = peer_timeout
        self.cooldown = cooldown
        self._consumptions: dict[int, Consumption] = {}
        self._peers: dict[str, float] = {}  # replica -> when last heard (monotonic)
        self._view: tuple[str, ...] = (self.replica,)
        self._shard_locks = {k: asyncio.Lock() for k in range(sharded.count)}
        self._stepped_back: dict[int, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.meter = meter or LoadMeter(sharded.count)
        self._planner = planner or Planner(sharded.count)
        self._plan: Plan | None = None  # the leader's latest plan (this replica's own, if it leads)
        self._peer_loads: dict[str, dict[int, float]] = {}  # live peer -> its shards' loads
        #: How many times this replica stepped back from a shard (for tests and logs).
        self.step_backs = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to every shard, then start announcing this replica and hearing its peers."""
        for shard in range(self.sharded.count):
            self._consumptions[shard] = await self._consume(shard)
        await self.bus.consume_raw(replicas_queue(self.sharded.service, self.replica), self._on_announcement)
        self.bus.on_connection_lost(self._forget_everything)
        self._spawn(self._announce_forever())
        log.info("%s replica %s consuming %d shards", self.sharded.service, self.replica, self.sharded.count)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def owned(self) -> list[int]:
        """The shards this replica owns in its present view of its peers and the leader's plan."""
        return [k for k in range(self.sharded.count) if self.owner(k) == self.replica]

    def owner(self, shard: int) -> str:
        """The owner of ``shard``: the leader's plan if it is for the replicas this one sees, else by hash."""
        if self._plan is not None and self._plan.view == self._view:
            return self._plan.owners[shard]
        return owner_of(shard, self._view)

    @property
    def leader(self) -> str:
        return self._view[0]

    @property
    def view(self) -> tuple[str, ...]:
        """The live replicas this one knows of, itself included, sorted."""
        return self._view

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ shards

    async def _consume(self, shard: int) -> Consumption:
        handlers = {cls: self._noting(shard, handler) for cls, handler in self.handlers.items()}
        return await self.bus.consume(self.sharded.queue(shard), handlers, prefetch=self.prefetch,
                                      concurrency=self.concurrency, per_experiment=True)

    def _noting(self, shard: int, handler: Handler) -> Handler:
        """``handler``, noticing deliveries from a shard this replica does not own."""
        async def handle(msg: Message) -> None:
            if self.owner(shard) != self.replica and self._cooled_down(shard):
                self._spawn(self._step_back(shard))
            started = time.monotonic()
            try:
                await handler(msg)
            finally:
                self.meter.add(shard, time.monotonic() - started)

        return handle

    def _cooled_down(self, shard: int) -> bool:
        return time.monotonic() - self._stepped_back.get(shard, -1e9) >= self.cooldown

    async def _step_back(self, shard: int) -> None:
        """Hand ``shard`` to the replica next in its queue's line (the owner, once all step back)."""
        async with self._shard_locks[shard]:
            if self.owner(shard) == self.replica:
                return
            self._stepped_back[shard] = time.monotonic()
            old = self._consumptions[shard]
            await self.bus.stop_consuming(old)
            seen = list(old.experiments)
            if seen:
                await self.on_release(seen)
            self._consumptions[shard] = await self._consume(shard)
            self.step_backs += 1
            log.info("%s replica %s stepped back from shard %d (owner %s; %d experiments forgotten)",
                     self.sharded.service, self.replica, shard, self.owner(shard), len(seen))

    def _forget_everything(self) -> None:
        """The connection is lost, so every shard is too: forget what was cached of them."""
        seen = sorted({e for c in self._consumptions.values() for e in c.experiments})
        for consumption in self._consumptions.values():
            consumption.experiments.clear()
        if seen:
            self._spawn(self.on_release(seen))

    # ------------------------------------------------------------------ peers

    async def _announce_forever(self) -> None:
        while True:
            self._update_view()
            loads = self.meter.rates()
            note: dict[str, object] = {"replica": self.replica,
                                       "loads": {str(k): v for k, v in loads.items()}}
            if self.leader == self.replica:
                self._set_plan(self._planner.plan(self._view, self._shard_loads(loads)))
                note["plan"] = self._plan.to_json() if self._plan else None
            try:
                await self.bus.announce(self.sharded.service, json.dumps(note).encode())
            except Exception as exc:  # the broker is away: the next round
                log.warning("announcing replica %s failed: %r", self.replica, exc)
            await asyncio.sleep(self.heartbeat)

    def _shard_loads(self, own: dict[int, float]) -> dict[int, float]:
        """Each shard's load: the highest any live replica reports (two do, while it changes hands)."""
        loads = dict(own)
        for replica, reported in self._peer_loads.items():
            if replica in self._view:
                for shard, load in reported.items():
                    loads[shard] = max(load, loads.get(shard, 0.0))
        return loads

    def _set_plan(self, plan: Plan | None) -> None:
        """Follow ``plan``, stepping back from the shards it gives to others."""
        if plan == self._plan:
            return
        before = self.owned()
        self._plan = plan
        after = self.owned()
        if before != after:
            log.info("%s replica %s follows %s's plan: owns shards %s", self.sharded.service, self.replica,
                     self.leader, after)
        for shard in range(self.sharded.count):
            if self.owner(shard) != self.replica:
                self._spawn(self._step_back(shard))

    async def _on_announcement(self, delivery: AbstractIncomingMessage) -> None:
        try:
            note = json.loads(delivery.body)
            replica = note["replica"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed replica announcement on %s", self.sharded.service)
            return
        if not isinstance(replica, str) or not 0 < len(replica) <= MAX_REPLICA_NAME:
            return
        known = replica in self._peers
        self._peers[replica] = time.monotonic()
        if replica != self.replica:
            self._peer_loads[replica] = parse_loads(note.get("loads"), self.sharded.count)
        if not known:
            self._update_view()
        if replica == self.leader != self.replica:
            plan = parse_plan(note.get("plan"), self.sharded.count, MAX_REPLICA_NAME)
            if plan is not None and plan.view == self._view:
                self._set_plan(plan)

    def _update_view(self) -> None:
        now = time.monotonic()
        for replica, seen in list(self._peers.items()):
            if now - seen > self.peer_timeout and replica != self.replica:
                del self._peers[replica]
                self._peer_loads.pop(replica, None)
        view = tuple(sorted({*self._peers, self.replica}))
        if view == self._view:
            return
        self._view = view
        log.info("%s replicas now %s; this one (%s) owns shards %s", self.sharded.service, ", ".join(view),
                 self.replica, self.owned())
        for shard in range(self.sharded.count):
            if self.owner(shard) != self.replica:
                self._spawn(self._step_back(shard))

