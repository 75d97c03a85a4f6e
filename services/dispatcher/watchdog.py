"""The dispatcher's watchdog: re-arms the tick chains of running experiments that went quiet."""

from __future__ import annotations

import asyncio
import logging

from shared.bus import Bus
from shared.layout import ACTIVE_PREFIX
from shared.messages import Ticket
from shared.storage import BlobStore

from . import lifecycle
from .lifecycle import Policy
from .states import ExperimentStates

__all__ = ["Watchdog"]

log = logging.getLogger("tunebus.dispatcher")


class Watchdog:
    """Every replica runs one; the re-arm tickets go through the queue, so the active consumer
    applies them in order with everything else (see ``apply_rearm``)."""

    def __init__(self, states: ExperimentStates, bus: Bus, store: BlobStore, policy: Policy) -> None:
        self.states = states
        self.bus = bus
        self.store = store
        self.policy = policy

    async def watch_experiments(self) -> None:
        """One round over the running experiments' markers.

        An experiment this process ticked recently needs no re-arm. The first round is how a
        restarted dispatcher resumes the experiments that were running (their outboxes are
        published again on load).
        """
        now = lifecycle.utcnow()
        for name in await self.store.list(ACTIVE_PREFIX):
            experiment_id = name.removeprefix(ACTIVE_PREFIX)
            cached = self.states.cached(experiment_id)
            if self.states.finished_here(experiment_id) or (cached is not None and cached.state.finished):
                await self.store.delete(name)  # ended (its marker outlived a crash, or a corrupt state)
                continue
            if cached is not None and cached.state.tick_due is not None and not lifecycle.tick_overdue(
                    cached.state, self.policy, now):
                continue
            await self.bus.publish(Ticket(experiment_id=experiment_id, purpose="dispatcher.tick", due=now,
                                          state={"rearm": True}))

    async def watch_forever(self, interval: float) -> None:
        while True:
            try:
                await self.watch_experiments()
            except Exception as exc:  # storage or broker away for now: next round
                log.warning("watchdog round failed: %r", exc)
            await asyncio.sleep(interval)
