"""The dispatcher service: owns each experiment's lifecycle.

Handlers are thin: load the experiment's summary (cached, ETag-checked), apply the pure
lifecycle function, move the trials that ended to the summary's pending list, write it with the
resulting messages in its outbox, publish them, append the ended trials to the ended log
(:mod:`shared.records`), ack. A finished experiment leaves the cache (written with an empty
outbox first), so memory follows the running experiments, not every one ever run.
A crash after the write republishes the outbox when the experiment is next loaded —
only after checking it (:mod:`.outbox`): a state document that does not validate, or an
outbox entry the dispatcher would not have written, ends that experiment in ERROR instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from pydantic import Field

from shared import records
from shared.bus import Bus, PermanentError, TransientError
from shared.config import ExperimentConfig, parse_experiment_config
from shared.errors import ConfigError
from shared.layout import ACTIVE_PREFIX, active_marker
from shared.messages import (
    ExperimentError,
    ExperimentResume,
    ExperimentStart,
    ExperimentStatus,
    ExperimentStatusChanged,
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
from shared.results import read_secrets
from shared.service import Running
from shared.settings import CommonSettings
from shared.shards import ShardedConsumer
from shared.state import ExperimentState, OutboxEntry
from shared.storage import BlobStore, ConcurrentWriteError, Layout
from shared.topology import DISPATCHER_QUEUE, DISPATCHER_SHARDS

from . import lifecycle
from .lifecycle import Plan, Policy
from .outbox import CorruptState, checked_outbox, checked_state

__all__ = ["Dispatcher", "DispatcherSettings", "check_algorithm_code", "start", "validate_start_config"]

log = logging.getLogger("tunebus.dispatcher")

#: Finished experiments' ids the dispatcher remembers (for its watchdog; ~100 bytes each).
FINISHED_IDS = 10_000


class DispatcherSettings(CommonSettings):
    """Dispatcher settings (``TUNEBUS_`` environment variables)."""

    tick_seconds: float = 1.0
    heartbeat_timeout: float = 30.0
    kill_grace: float = 60.0
    max_attempts: int = 3
    claim_timeout: float = 60.0
    ended_timeout: float = 30.0
    remote_silence_timeout: float = 600.0
    suggest_timeout: float = 120.0
    max_reasks: int = 5
    tick_stall: float = 10.0
    # How often every replica lists the running experiments and re-arms any whose tick chain
    # was lost (with a broker crash); also how a restarted dispatcher finds its experiments.
    watchdog_seconds: float = 10.0
    suggestion_lookahead: int = 1  # suggestions asked for beyond the free slots
    # Experiments whose messages one replica handles at once (each experiment's one at a time).
    dispatcher_concurrency: int = Field(default=8, ge=1, le=1000)

    def policy(self) -> Policy:
        """The lifecycle's timings, from the settings of the same names."""
        return Policy(**{f.name: getattr(self, f.name) for f in fields(Policy)})


@dataclass
class _Loaded:
    state: ExperimentState
    etag: str
    plan: Plan
    written: str  # the JSON last written, to skip writes that change nothing
    # Whether this process knows that no record of ``state.pending_ended`` is in the log yet
    # (false after a load or a failed append: the append then reads the chunks first).
    log_clean: bool = True



def validate_start_config(config: dict[str, Any]) -> ExperimentConfig:
    """The start message's config validated (secrets included); PermanentError names the fields."""
    try:
        return parse_experiment_config(config)
    except ConfigError as exc:
        raise PermanentError(str(exc)) from exc


def check_algorithm_code(msg: ExperimentStart, config: ExperimentConfig) -> dict[str, str]:
    """The start's stored custom-algorithm archives, one per custom (className) tuner or assessor,
    each at its place in the experiment's folder; PermanentError names what is wrong."""
    layout = Layout(msg.experiment_id)
    custom = [role for role in ("tuner", "assessor")
              if getattr(config, role) is not None and getattr(config, role).class_name]
    for role in custom:
        expected = layout.algorithm_code_archive(role)
        if msg.algorithm_code.get(role) != expected:
            raise PermanentError(
                f"{role}: a custom {role} (className) needs its code stored at {expected} and named in the "
                f"start message's algorithm_code.{role} (tunebus create does both); got "
                f"{msg.algorithm_code.get(role)!r}")
    extra = sorted(set(msg.algorithm_code) - set(custom))
    if extra:
        raise PermanentError(f"algorithm_code names code for {', '.join(extra)}, which the config does not "
                             f"give as a custom className")
    return {role: layout.algorithm_code_archive(role) for role in custom}


class Dispatcher:
    """Applies events to experiments; one instance per process. Its handlers run for several
    experiments at once, one message at a time per experiment (the bus sees to that); the
    experiments of a shard another replica took over are forgotten (:meth:`forget`)."""

    def __init__(self, bus: Bus, store: BlobStore, policy: Policy, lookahead: int = 1) -> None:
        self.bus = bus
        self.store = store
        self.policy = policy
        self.lookahead = lookahead
        self._cache: dict[str, _Loaded] = {}
        # Ids of experiments that finished here (ids only, the newest FINISHED_IDS): the
        # watchdog removes a marker one of them left behind without loading it again.
        self._finished: OrderedDict[str, None] = OrderedDict()

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

    # ------------------------------------------------------------------ state I/O

    async def _load(self, experiment_id: str) -> _Loaded | None:
        cached = self._cache.get(experiment_id)
        if cached is not None:
            return cached
        layout = Layout(experiment_id)
        found = await self.store.read_document(layout.state_doc)
        if found is None:
            return None
        body, etag = found
        try:
            experiment = await records.read_experiment_doc(self.store, experiment_id)
        except records.BadExperimentDocument as exc:
            raise PermanentError(str(exc)) from None
        if experiment is None:
            # experiment.json is written before the state: only a start that was rejected (its
            # ERROR state is all there is) has none. Nothing can happen to it any more.
            raise PermanentError(f"experiment {experiment_id!r} never started (its start was rejected; "
                                 "its state says why)")
        plan = lifecycle.plan_from_config(experiment.config, self.lookahead)
        try:
            state = checked_state(body, experiment_id)
            outbox = checked_outbox(state)
        except CorruptState as exc:
            return await self._end_corrupt(experiment_id, body, etag, plan, str(exc))
        loaded = _Loaded(state, etag, lifecycle.plan_with_limits(plan, state.updated_limits),
                         state.model_dump_json(), log_clean=False)
        # Ended trials of an old-format document (all trials in it) move to the log now; pending
        # ones of a write whose appends a crash may have cut short are appended (deduped).
        records.retire_ended(state)
        await self._append_ended(loaded)
        self._cache[experiment_id] = loaded
        if outbox:
            # Decided before a crash, maybe never published: publish again (consumers dedupe).
            log.info("experiment %s: republishing %d outbox messages", experiment_id, len(outbox))
            await self.bus.publish_many(outbox)
        if state.requested and not state.finished:
            # Answers may have been consumed by the last process and lost with it before they
            # were recorded: ask again. The tuner answers an id it knows with the same values.
            await self.bus.publish_many(lifecycle.suggest_requests(experiment_id, list(state.requested)))
        return loaded

    async def _end_corrupt(self, experiment_id: str, body: bytes, etag: str, plan: Plan,
                           problem: str) -> _Loaded:
        """End an experiment whose stored state the dispatcher did not write, in ERROR, saying why.

        Nothing of its outbox is published. If the state itself validates (only its outbox is
        forged), its running trials are cancelled as for any error; otherwise the document is
        replaced by an ERROR state (its trials cannot be known from it).
        """
        reason = f"the stored state was not written by the dispatcher: {problem}"
        log.error("experiment %s: %s", experiment_id, reason)
        now = lifecycle.utcnow()
        try:
            state = checked_state(body, experiment_id)
        except CorruptState:
            state = ExperimentState(experiment_id=experiment_id, started_at=now, ended_at=now,
                                    status=ExperimentStatus.ERROR, reason=reason)
            out: list[Message] = [ExperimentStatusChanged(experiment_id=experiment_id,
                                                          status=ExperimentStatus.ERROR, reason=reason)]
        else:
            state.outbox = []
            out = [] if state.finished else lifecycle.apply_error(state, reason, now)
        loaded = _Loaded(state, etag, plan, body.decode("utf-8", "replace"), log_clean=False)
        self._cache[experiment_id] = loaded
        await self._commit(loaded, out)
        return loaded

    async def _commit(self, loaded: _Loaded, out: list[Message]) -> None:
        state = loaded.state
        records.retire_ended(state)  # durable with this write; appended to the log after it
        state.outbox = [OutboxEntry.of(m) for m in out]
        body = state.model_dump_json()
        if body != loaded.written:
            try:
                loaded.etag = await self.store.write_document(
                    Layout(state.experiment_id).state_doc, body.encode(), etag=loaded.etag
                )
            except ConcurrentWriteError as exc:
                # Someone else (a previous active dispatcher) wrote meanwhile: reload and retry.
                self._cache.pop(state.experiment_id, None)
                raise TransientError(f"state of {state.experiment_id} changed concurrently") from exc
            loaded.written = body
        if out:
            await self.bus.publish_many(out)
        await self._append_ended(loaded)  # after the publish: off the next trial's path

    async def _append_ended(self, loaded: _Loaded) -> None:
        """Append the summary's pending ended trials to the log (the next write records it)."""
        if not loaded.state.pending_ended:
            return
        clean, loaded.log_clean = loaded.log_clean, False
        await records.append_pending(self.store, loaded.state, known_clean=clean)
        loaded.log_clean = True

    async def _forget_finished(self, loaded: _Loaded) -> None:
        """A finished experiment leaves the cache: its outbox (published) and pending trials
        (appended) are written away first, so a later load republishes and appends nothing."""
        experiment_id = loaded.state.experiment_id
        await self._commit(loaded, [])
        await self.store.delete(active_marker(experiment_id))
        self._cache.pop(experiment_id, None)
        self._finished[experiment_id] = None
        self._finished.move_to_end(experiment_id)
        while len(self._finished) > FINISHED_IDS:
            self._finished.popitem(last=False)

    async def _apply(self, experiment_id: str,
                     change: Callable[[_Loaded, datetime], list[Message]], *,
                     required: bool = True, deferrable: bool = False) -> None:
        """Apply one event to an experiment; persist, then publish what follows from it.

        A ``deferrable`` change that decides nothing (no messages) is kept in memory and
        written with the next write (at the latest the next tick, about a second later):
        it is a progress note (RUNNING, a heartbeat) whose loss in a crash the next report
        repairs, and not writing it keeps the state writes off the trials' critical path.
        """
        loaded = await self._load(experiment_id)
        if loaded is None:
            if required:
                raise PermanentError(f"unknown experiment {experiment_id!r}")
            return
        was_finished = loaded.state.finished
        try:
            out = change(loaded, lifecycle.utcnow())
        except Exception:
            self._cache.pop(experiment_id, None)  # the cached state may be half-changed
            raise
        if deferrable and not out and not loaded.state.finished:
            return
        if was_finished and not loaded.state.finished:  # resumed: running again
            self._finished.pop(experiment_id, None)
            await self.store.write_bytes(active_marker(experiment_id), b"")
        await self._commit(loaded, out)
        if loaded.state.finished:
            await self._forget_finished(loaded)

    # ------------------------------------------------------------------ handlers

    async def on_start(self, msg: ExperimentStart) -> None:
        existing = await self._load(msg.experiment_id)
        if existing is not None:
            if existing.state.finished:
                self._cache.pop(msg.experiment_id, None)  # finished experiments are not kept
            if msg.message_id not in existing.state.seen_starts:
                log.warning("experiment %s already exists; start message %s ignored",
                            msg.experiment_id, msg.message_id)
            return
        layout = Layout(msg.experiment_id)
        try:
            parsed = validate_start_config(msg.config)
            algorithm_code = check_algorithm_code(msg, parsed)
            await self._keep_secrets(msg.experiment_id, parsed)
        except PermanentError as exc:
            await self._record_rejected(msg, str(exc))
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
        self._cache[msg.experiment_id] = _Loaded(state, etag, plan, state.model_dump_json())
        log.info("experiment %s started: concurrency %d, max trials %s", msg.experiment_id,
                 plan.concurrency, plan.max_trials)
        await self.bus.publish_many(out)

    async def _keep_secrets(self, experiment_id: str, config: ExperimentConfig) -> None:
        """Move secrets published in the start message to ``secrets.json``; check one is there.

        ``tunebus create`` writes ``secrets.json`` itself and publishes no secret. A program
        may publish the key in the message's config (discouraged: it then sits in the queue
        until handled); it is stored apart here and left out of ``experiment.json``. An AzureBlob
        sharedStorage needs its key (to sign the trials' SAS): a start without one is rejected.
        """
        secrets = config.secrets()
        path = Layout(experiment_id).secrets_doc
        if not secrets.empty:
            log.warning("experiment %s: the start message carries a storage account key; it is kept in "
                        "%s, not in experiment.json (publishing keys is discouraged)", experiment_id, path)
            try:
                await self.store.write_json(path, secrets.to_document(), create_only=True)
            except ConcurrentWriteError:
                pass  # written before (by the CLI, or before a redelivery): the first one stands
            return
        if config.shared_storage is None:
            return
        stored = await read_secrets(self.store, experiment_id)
        if stored.shared_storage_account_key is None:
            raise PermanentError(
                "sharedStorage.storageAccountKey: required (the trials' results SAS URLs of the "
                "sharedStorage container are signed with it); give it in the experiment file")

    async def _record_rejected(self, msg: ExperimentStart, reason: str) -> None:
        """Leave a readable ERROR state for a start that cannot run (it is dead-lettered too)."""
        now = lifecycle.utcnow()
        state = ExperimentState(experiment_id=msg.experiment_id, started_at=now, ended_at=now,
                                status=ExperimentStatus.ERROR, reason=reason)
        try:
            await self.store.write_json(Layout(msg.experiment_id).state_doc, state.model_dump(mode="json"),
                                        create_only=True)
        except ConcurrentWriteError:
            return
        await self.bus.publish(ExperimentStatusChanged(experiment_id=msg.experiment_id,
                                                       status=ExperimentStatus.ERROR, reason=reason))

    async def on_stop(self, msg: ExperimentStop) -> None:
        await self._apply(msg.experiment_id, lambda s, now: lifecycle.apply_stop(s.state, msg.reason, now))

    async def on_resume(self, msg: ExperimentResume) -> None:
        if (msg.experiment_id not in self._cache
                and await records.read_experiment_doc(self.store, msg.experiment_id) is None):
            # Unknown, or its start was rejected (only an ERROR state was written): nothing to run.
            raise PermanentError(f"experiment {msg.experiment_id!r} cannot be resumed: it never "
                                 "started (unknown, or its start was rejected)")
        await self._apply(msg.experiment_id,
                          lambda s, now: lifecycle.apply_resume(s.state, s.plan, self.policy, now))

    async def on_update(self, msg: ExperimentUpdate) -> None:
        def change(loaded: _Loaded, now: datetime) -> list[Message]:
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
            self._cache.pop(experiment_id, None)

    # ------------------------------------------------------------------ watchdog

    async def watch_experiments(self) -> None:
        """Re-arm the tick chains of running experiments that went quiet (see ``apply_rearm``).

        Every replica runs this; the re-arm tickets go through the queue, so the active
        consumer applies them in order with everything else. An experiment this process
        ticked recently needs none. Its first round is how a restarted dispatcher resumes
        the experiments that were running (their outboxes are published again on load).
        """
        now = lifecycle.utcnow()
        for name in await self.store.list(ACTIVE_PREFIX):
            experiment_id = name.removeprefix(ACTIVE_PREFIX)
            cached = self._cache.get(experiment_id)
            if experiment_id in self._finished or (cached is not None and cached.state.finished):
                await self.store.delete(name)  # ended (its marker outlived a crash, or a corrupt state)
                continue
            if cached is not None and cached.state.ticked_at is not None and (
                    now - cached.state.ticked_at).total_seconds() < self.policy.tick_stall:
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


async def start(settings: DispatcherSettings) -> Running:
    """Connect, declare, start consuming; returns its shutdown and health checks."""
    store = BlobStore(settings.storage_connection_string, settings.storage_container)
    await store.ensure_container()
    bus = Bus(settings.amqp_url, service="dispatcher")
    await bus.connect()
    dispatcher = Dispatcher(bus, store, settings.policy(), settings.suggestion_lookahead)
    await bus.drain_retired_queues(DISPATCHER_SHARDS, DISPATCHER_QUEUE)
    consumer = ShardedConsumer(bus, DISPATCHER_SHARDS, dispatcher.handlers(),
                               prefetch=max(32, settings.dispatcher_concurrency),
                               concurrency=settings.dispatcher_concurrency, on_release=dispatcher.forget)
    await consumer.start()
    watchdog = asyncio.create_task(dispatcher.watch_forever(settings.watchdog_seconds))

    async def shutdown() -> None:
        watchdog.cancel()
        await consumer.stop()
        await bus.close()
        await store.close()

    return Running(shutdown, {"broker": bus.check, "storage": store.check})
