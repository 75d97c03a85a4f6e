"""The experiments' state documents as the dispatcher keeps them: loaded once (then cached,
ETag-checked), written with their outbox before it is published, forgotten when they finish.

A finished experiment leaves the cache (written with an empty outbox first), so memory follows
the running experiments, not every one ever run. A crash after a write republishes the outbox
when the experiment is next loaded, only after checking it (:mod:`.outbox`): a state document
that does not validate, or an outbox entry the dispatcher would not have written, ends that
experiment in ERROR instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from shared import records
from shared.bus import Bus, PermanentError, TransientError
from shared.layout import active_marker
from shared.messages import ExperimentStatus, ExperimentStatusChanged, Message, Ticket
from shared.state import ExperimentState, OutboxEntry
from shared.storage import BlobStore, ConcurrentWriteError, Layout

from . import lifecycle
from .lifecycle import Plan
from .outbox import CorruptState, checked_outbox, checked_state

__all__ = ["FINISHED_IDS", "Batch", "ExperimentStates", "Loaded"]

log = logging.getLogger("tunebus.dispatcher")

#: Finished experiments' ids the dispatcher remembers (for its watchdog; ~100 bytes each).
FINISHED_IDS = 10_000


@dataclass
class Batch:
    """Changes applied while a write was in flight: written together by the next one."""

    done: asyncio.Future[None]
    out: list[Message] = field(default_factory=list)


@dataclass
class Loaded:
    """One experiment's state as this process last loaded or wrote it."""

    state: ExperimentState
    etag: str
    plan: Plan
    written: str  # the JSON last written, to skip writes that change nothing
    # Whether this process knows that no record of ``state.pending_ended`` is in the log yet
    # (false after a load or a failed append: the append then reads the chunks first).
    log_clean: bool = True
    batch: Batch | None = None  # changes waiting for the next write
    writing: bool = False  # a writer task is at work on this state's batches
    # Set when a write failed or a change broke off half-applied: what is in memory is not to be
    # written any more (the state left the cache; the next delivery loads what is stored).
    broken: BaseException | None = None


class ExperimentStates:
    """The running experiments' states this process holds, and the ids of those that finished here."""

    def __init__(self, bus: Bus, store: BlobStore, lookahead: int = 1) -> None:
        self.bus = bus
        self.store = store
        self.lookahead = lookahead
        self._cache: dict[str, Loaded] = {}
        self._writers: set[asyncio.Task[None]] = set()
        # Ids of experiments that finished here (ids only, the newest FINISHED_IDS): the
        # watchdog removes a marker one of them left behind without loading it again.
        self._finished: OrderedDict[str, None] = OrderedDict()

    def cached(self, experiment_id: str) -> Loaded | None:
        """The experiment's state if this process holds it (no I/O)."""
        return self._cache.get(experiment_id)

    def keep(self, loaded: Loaded) -> None:
        """Hold a state this process has just written (a new experiment's)."""
        self._cache[loaded.state.experiment_id] = loaded

    def drop(self, experiment_id: str) -> None:
        """Forget the held state: the next use loads it again from storage."""
        self._cache.pop(experiment_id, None)

    def break_off(self, loaded: Loaded, why: BaseException) -> None:
        """``loaded`` holds a change that will never be written (it failed half-way, or its write
        did): forget it, and fail the changes still waiting to be written with it."""
        loaded.broken = loaded.broken or why
        if self._cache.get(loaded.state.experiment_id) is loaded:
            self.drop(loaded.state.experiment_id)

    def finished_here(self, experiment_id: str) -> bool:
        """Whether the experiment finished in this process (its marker may outlive a crash)."""
        return experiment_id in self._finished

    async def load(self, experiment_id: str) -> Loaded | None:
        """The experiment's state (None: none is stored), republishing what a crash may have lost."""
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
        loaded = Loaded(state, etag, lifecycle.plan_with_limits(plan, state.updated_limits),
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
                           problem: str) -> Loaded:
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
        loaded = Loaded(state, etag, plan, body.decode("utf-8", "replace"), log_clean=False)
        self._cache[experiment_id] = loaded
        await self.commit(loaded, out)
        return loaded

    async def commit_with_others(self, loaded: Loaded, out: list[Message]) -> None:
        """Make the changes applied to ``loaded`` so far durable, then publish ``out``: at once
        if nothing is being written, else in the next write, together with every change applied
        meanwhile (a group commit: one write and one round of publishing for all of them, in the
        order they were applied). Returns once that is done; raises if it failed, and then every
        change of the batch is lost with the state, which leaves the cache: their deliveries are
        retried on what is stored (whose outbox the next load publishes again)."""
        if loaded.broken is not None:
            raise TransientError(f"state of {loaded.state.experiment_id} was dropped: {loaded.broken!r}")
        if loaded.batch is None:
            loaded.batch = Batch(asyncio.get_running_loop().create_future())
            # Read even if no handler waits any more (it was cancelled): no "never retrieved".
            loaded.batch.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        batch = loaded.batch
        batch.out += out
        if not loaded.writing:
            loaded.writing = True
            writer = asyncio.create_task(self._write_batches(loaded))
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        await asyncio.shield(batch.done)

    async def _write_batches(self, loaded: Loaded) -> None:
        """Write ``loaded``'s batches one after the other until none waits."""
        batch = None
        try:
            while (batch := loaded.batch) is not None:
                loaded.batch = None
                if loaded.broken is not None:
                    batch.done.set_exception(TransientError(
                        f"state of {loaded.state.experiment_id} was dropped before this change was "
                        f"written: {loaded.broken!r}"))
                    continue
                try:
                    await self.commit(loaded, batch.out)
                except Exception as exc:
                    self.break_off(loaded, exc)
                    batch.done.set_exception(exc)
                    continue
                batch.done.set_result(None)
        finally:
            loaded.writing = False
            for left in (batch, loaded.batch):  # cancelled (the process stops): retried elsewhere
                if left is not None and not left.done.done():
                    self.break_off(loaded, TransientError("the dispatcher is stopping"))
                    left.done.set_exception(TransientError("the dispatcher is stopping"))

    async def commit(self, loaded: Loaded, out: list[Message]) -> None:
        """Write the state with ``out`` as its outbox (unless nothing changed), then publish ``out``."""
        state = loaded.state
        records.retire_ended(state)  # durable with this write; appended to the log after it
        # Tick tickets stay out of the outbox: a tick that decides nothing then changes nothing
        # stored, and a ticket lost with a crash is replaced by the watchdog's re-arm.
        state.outbox = [OutboxEntry.of(m) for m in out if not _is_tick(m)]
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

    async def _append_ended(self, loaded: Loaded) -> None:
        """Append the summary's pending ended trials to the log (the next write records it)."""
        if not loaded.state.pending_ended:
            return
        clean, loaded.log_clean = loaded.log_clean, False
        await records.append_pending(self.store, loaded.state, known_clean=clean)
        loaded.log_clean = True

    async def forget_finished(self, loaded: Loaded) -> None:
        """A finished experiment leaves the cache: its outbox (published) and pending trials
        (appended) are written away first, so a later load republishes and appends nothing."""
        experiment_id = loaded.state.experiment_id
        await self.commit(loaded, [])
        await self.store.delete(active_marker(experiment_id))
        self._cache.pop(experiment_id, None)
        self._finished[experiment_id] = None
        self._finished.move_to_end(experiment_id)
        while len(self._finished) > FINISHED_IDS:
            self._finished.popitem(last=False)

    async def mark_running(self, experiment_id: str) -> None:
        """A finished experiment runs again (resumed): the watchdog watches it again."""
        self._finished.pop(experiment_id, None)
        await self.store.write_bytes(active_marker(experiment_id), b"")


def _is_tick(message: Message) -> bool:
    return isinstance(message, Ticket) and message.purpose == "dispatcher.tick"
