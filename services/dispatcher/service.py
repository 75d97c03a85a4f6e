"""The dispatcher service: owns each experiment's lifecycle.

Handlers are thin: load the experiment's summary (:mod:`.states`), apply the pure lifecycle
function (:mod:`.lifecycle`), write the summary with the resulting messages in its outbox,
publish them, append the ended trials to the ended log (:mod:`shared.records`), ack. Once its
change is applied, a handler lets the experiment's next delivery apply while it waits for its
write: changes applied meanwhile share the next write (a group commit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from shared import records
from shared.bus import Bus, PermanentError, end_turn
from shared.layout import active_marker
from shared.messages import (
    ExperimentError,
    ExperimentResume,
    ExperimentStart,
    ExperimentStop,
    ExperimentUpdate,
    Message,
    Ticket,
    TrialEnded,
    TrialHeartbeat,
    TrialProgress,
    TrialStatusChanged,
    TrialStopRequested,
    TrialSuggested,
)
from shared.service import Running, open_connections
from shared.shards import ShardedConsumer
from shared.state import OutboxEntry
from shared.storage import BlobStore, ConcurrentWriteError, Layout
from shared.topology import DISPATCHER_QUEUE, DISPATCHER_SHARDS

from . import lifecycle
from .lifecycle import Policy
from .settings import DispatcherSettings
from .start_checks import check_algorithm_code, keep_secrets, record_rejected, validate_start_config
from .states import ExperimentStates, Loaded
from .watchdog import Watchdog

__all__ = ["Dispatcher", "DispatcherSettings", "check_algorithm_code", "start", "validate_start_config"]

log = logging.getLogger("tunebus.dispatcher")


class Dispatcher:
    """Applies events to experiments; one instance per process. Its handlers run for several
    experiments at once, one message at a time per experiment (the bus sees to that); the
    experiments of a shard another replica took over are forgotten (:meth:`forget`)."""

    def __init__(self, bus: Bus, store: BlobStore, policy: Policy, lookahead: int = 1) -> None:
        self.bus = bus
        self.store = store
        self.policy = policy
        self.lookahead = lookahead
        self.states = ExperimentStates(bus, store, lookahead)
        self.watchdog = Watchdog(self.states, bus, store, policy)

    def handlers(self) -> dict[type[Message], Callable[[Any], Awaitable[None]]]:
        return {
            ExperimentStart: self.on_start,
            ExperimentStop: self.on_stop,
            ExperimentResume: self.on_resume,
            ExperimentUpdate: self.on_update,
            ExperimentError: self.on_error,
            TrialSuggested: self.on_suggested,
            TrialStatusChanged: self.on_status,
            TrialEnded: self.on_ended,
            TrialProgress: self.on_progress,
            TrialStopRequested: self.on_stop_request,
            TrialHeartbeat: self.on_heartbeat,
            Ticket: self.on_ticket,
        }

    async def _apply(self, experiment_id: str,
                     change: Callable[[Loaded, datetime], list[Message]], *,
                     required: bool = True, deferrable: bool = False) -> None:
        """Apply one event to an experiment; persist, then publish what follows from it.

        A ``deferrable`` change that decides nothing (no messages) is kept in memory and
        written with the next write (at the latest the next tick, within ``tick_idle_seconds``):
        it is a progress note (RUNNING, a heartbeat) whose loss in a crash the next report
        repairs, and not writing it keeps the state writes off the trials' critical path.
        """
        loaded = await self.states.load(experiment_id)
        if loaded is None:
            if required:
                raise PermanentError(f"unknown experiment {experiment_id!r}")
            return
        was_finished = loaded.state.finished
        try:
            out = change(loaded, lifecycle.utcnow())
        except Exception as exc:
            self.states.break_off(loaded, exc)  # the cached state may be half-changed
            raise
        if deferrable and not out and not loaded.state.finished:
            return
        if was_finished and not loaded.state.finished:  # resumed: running again
            await self.states.mark_running(experiment_id)
        if loaded.state.finished:
            await self.states.commit_with_others(loaded, out)
            await self.states.forget_finished(loaded)
            return
        # Applied: the experiment's next delivery may apply too while this change is written
        # (it then joins the next write); this delivery is acked once its own write is done.
        end_turn()
        await self.states.commit_with_others(loaded, out)

    # ------------------------------------------------------------------ handlers

    async def on_start(self, msg: ExperimentStart) -> None:
        existing = await self.states.load(msg.experiment_id)
        if existing is not None:
            if existing.state.finished:
                self.states.drop(msg.experiment_id)  # finished experiments are not kept
            if msg.message_id not in existing.state.seen_starts:
                log.warning("experiment %s already exists; start message %s ignored",
                            msg.experiment_id, msg.message_id)
            return
        layout = Layout(msg.experiment_id)
        try:
            parsed = validate_start_config(msg.config)
            algorithm_code = check_algorithm_code(msg, parsed)
            await keep_secrets(self.store, msg.experiment_id, parsed)
        except PermanentError as exc:
            await record_rejected(self.store, self.bus, msg, str(exc))
            raise
        config = parsed.to_wire()  # no secret: experiment.json is read by every service
        await records.write_experiment_doc(self.store, records.ExperimentDocument(
            experiment_id=msg.experiment_id, config=config, code_blob=msg.code_blob,
            algorithm_code=algorithm_code, seed=msg.seed, created_at=msg.time))
        await self.store.write_bytes(active_marker(msg.experiment_id), b"")  # before it can run
        plan = lifecycle.plan_from_config(config, self.lookahead)
        state, out = lifecycle.start_experiment(msg.experiment_id, plan, self.policy,
                                                lifecycle.utcnow(), msg.message_id)
        state.outbox = [OutboxEntry.of(m) for m in out]
        try:
            etag = await self.store.write_json(layout.state_doc, state.model_dump(mode="json"),
                                               create_only=True)
        except ConcurrentWriteError:
            return  # another dispatcher created it first; its outbox carries the messages
        self.states.keep(Loaded(state, etag, plan, state.model_dump_json()))
        log.info("experiment %s started: concurrency %d, max trials %s", msg.experiment_id,
                 plan.concurrency, plan.max_trials)
        await self.bus.publish_many(out)

    async def on_stop(self, msg: ExperimentStop) -> None:
        await self._apply(msg.experiment_id, lambda s, now: lifecycle.apply_stop(s.state, msg.reason, now))

    async def on_resume(self, msg: ExperimentResume) -> None:
        if (self.states.cached(msg.experiment_id) is None
                and await records.read_experiment_doc(self.store, msg.experiment_id) is None):
            # Unknown, or its start was rejected (only an ERROR state was written): nothing to run.
            raise PermanentError(f"experiment {msg.experiment_id!r} cannot be resumed: it never "
                                 "started (unknown, or its start was rejected)")
        await self._apply(msg.experiment_id,
                          lambda s, now: lifecycle.apply_resume(s.state, s.plan, self.policy, now))

    async def on_update(self, msg: ExperimentUpdate) -> None:
        def change(loaded: Loaded, now: datetime) -> list[Message]:
            loaded.plan, out = lifecycle.apply_update(loaded.state, loaded.plan, msg, now)
            return out

        await self._apply(msg.experiment_id, change)

    async def on_error(self, msg: ExperimentError) -> None:
        reason = f"{msg.service}: {msg.reason}"
        await self._apply(msg.experiment_id, lambda s, now: lifecycle.apply_error(s.state, reason, now))

    async def on_suggested(self, msg: TrialSuggested) -> None:
        # Written at once even when it only waits for a slot: a tuner rebuilt after a crash
        # learns from the state which parameters it has already handed out.
        await self._apply(msg.experiment_id,
                          lambda s, now: lifecycle.apply_suggested(s.state, s.plan, msg, now))

    async def on_status(self, msg: TrialStatusChanged) -> None:
        # Progress notes: the job's end only holds off the lost-job check until trial.ended,
        # which is already queued behind it.
        await self._apply(msg.experiment_id, lambda s, now: lifecycle.apply_status(s.state, msg, now),
                          deferrable=True)

    async def on_progress(self, msg: TrialProgress) -> None:
        # A progress note for people watching (trial ls): written with the next write.
        await self._apply(msg.experiment_id, lambda s, now: lifecycle.apply_progress(s.state, msg, now),
                          required=False, deferrable=True)

    async def on_ended(self, msg: TrialEnded) -> None:
        await self._apply(msg.experiment_id,
                          lambda s, now: lifecycle.apply_ended(s.state, s.plan, msg, now, self.policy))

    async def on_stop_request(self, msg: TrialStopRequested) -> None:
        await self._apply(msg.experiment_id,
                          lambda s, now: lifecycle.apply_stop_request(s.state, msg, now))

    async def on_heartbeat(self, msg: TrialHeartbeat) -> None:
        await self._apply(msg.experiment_id, lambda s, now: lifecycle.apply_heartbeat(s.state, msg, now),
                          required=False, deferrable=True)

    async def on_ticket(self, msg: Ticket) -> None:
        if msg.purpose != "dispatcher.tick":
            raise PermanentError(f"dispatcher does not handle {msg.purpose} tickets")
        if msg.due > lifecycle.utcnow():
            await self.bus.publish_ticket(msg)  # not yet: park it again
            return
        apply = lifecycle.apply_rearm if msg.state.get("rearm") else lifecycle.apply_tick
        await self._apply(msg.experiment_id,
                          lambda s, now: apply(s.state, s.plan, self.policy, msg, now), required=False)

    async def forget(self, experiment_ids: list[str]) -> None:
        """Drop what is cached of these experiments: another replica handles them now, so the
        next message of theirs here loads them again from storage."""
        for experiment_id in experiment_ids:
            self.states.drop(experiment_id)


async def start(settings: DispatcherSettings) -> Running:
    """Connect, declare, start consuming; returns its shutdown and health checks."""
    connections = await open_connections(settings, service="dispatcher")
    bus = connections.bus
    dispatcher = Dispatcher(bus, connections.store, settings.policy(), settings.suggestion_lookahead)
    await bus.drain_retired_queues(DISPATCHER_SHARDS, DISPATCHER_QUEUE)
    consumer = ShardedConsumer(bus, DISPATCHER_SHARDS, dispatcher.handlers(),
                               prefetch=max(32, settings.dispatcher_concurrency),
                               concurrency=settings.dispatcher_concurrency, on_release=dispatcher.forget)
    await consumer.start()
    watchdog = asyncio.create_task(dispatcher.watchdog.watch_forever(settings.watchdog_seconds))

    async def shutdown() -> None:
        watchdog.cancel()
        await consumer.stop()
        await connections.close()

    return connections.running(shutdown)
