"""How the dispatcher's handlers make their changes durable (real handlers, in-memory storage).

A delivery is acked only once its change is written and what follows from it published; changes
applied while a write is in flight go out together in the next write (one write for all of
them, in the order they were applied); a write or publish that fails fails every change that
waited on it, and the next delivery starts again from what is stored, outbox included.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from services.dispatcher.lifecycle import Policy, utcnow
from services.dispatcher.outbox import checked_outbox
from services.dispatcher.service import Dispatcher
from shared.bus import TransientError
from shared.messages import (
    ExperimentStart,
    Message,
    Ticket,
    TrialEnded,
    TrialStatus,
    TrialStatusChanged,
    TrialSubmit,
)
from shared.state import ExperimentState
from shared.storage import Layout
from tests.unit.test_dispatcher_outbox import FakeBus
from tests.unit.test_dispatcher_records import CONFIG, FakeStore, answer_requests, run_until, started

STATE = Layout("exp1").state_doc


class GatedStore(FakeStore):
    """While ``gated``, each summary write waits for a pass (:meth:`let_through`); ``fail_next``
    makes the next one raise."""

    def __init__(self) -> None:
        super().__init__()
        self.gated = False
        self.passes = asyncio.Semaphore(0)
        self.summary_writes = 0
        self.writing = 0  # summary writes waiting for a pass
        self.fail_next = False

    def let_through(self, writes: int = 1) -> None:
        for _ in range(writes):
            self.passes.release()

    async def write_document(self, path: str, body: bytes, *, etag: str | None = None,
                             create_only: bool = False) -> str:
        if path == STATE:
            if self.gated:
                self.writing += 1
                await self.passes.acquire()
                self.writing -= 1
            if self.fail_next:
                self.fail_next = False
                raise ConnectionError("storage went away")
            self.summary_writes += 1
        return await super().write_document(path, body, etag=etag, create_only=create_only)


class FlakyBus(FakeBus):
    """Its next ``publish_many`` fails (after the summary write: the messages are in the outbox)."""

    fail_next = False

    async def publish_many(self, msgs: Any) -> None:
        msgs = list(msgs)
        if self.fail_next and msgs:
            self.fail_next = False
            raise TransientError("publishing failed: the broker went away")
        await super().publish_many(msgs)


def summary(store: FakeStore) -> ExperimentState:
    return ExperimentState.model_validate_json(store.blobs[STATE])


def ended(dispatcher: Dispatcher, index: int) -> TrialEnded:
    """trial.ended for the running trial ``index`` (oldest first)."""
    state = dispatcher.states._cache["exp1"].state
    trial = sorted(state.running(), key=lambda t: t.sequence_id)[index]
    return TrialEnded(experiment_id="exp1", trial_id=trial.trial_id, parameter_id=trial.sequence_id,
                      status=TrialStatus.SUCCEEDED, final_value=trial.parameters["x"])


async def gated_dispatcher() -> tuple[Dispatcher, GatedStore, FakeBus]:
    dispatcher, _, bus = await started()
    store = GatedStore()
    store.blobs = dispatcher.store.blobs  # type: ignore[attr-defined]
    store.version = dispatcher.store.version  # type: ignore[attr-defined]
    dispatcher.store = dispatcher.states.store = store  # type: ignore[assignment]
    await run_until(dispatcher, bus, 2)
    await answer_requests(dispatcher, bus)  # every slot full, suggestions ready
    return dispatcher, store, bus


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def what(published: list[Message]) -> list[tuple[str, object]]:
    """The published messages by type and parameter id (trial ids are random)."""
    return [(type(m).__name__, getattr(m, "parameter_id", getattr(m, "parameter_ids", None)))
            for m in published]


async def test_changes_applied_during_a_write_go_out_together_in_the_next_one() -> None:
    # The same three trial.ended, one after the other, as the reference.
    reference, _, reference_bus = await gated_dispatcher()
    messages = [ended(reference, i) for i in range(3)]
    reference_bus.published.clear()
    for m in messages:
        await reference.on_ended(m)

    dispatcher, store, bus = await gated_dispatcher()
    messages = [ended(dispatcher, i) for i in range(3)]
    bus.published.clear()
    writes_before = store.summary_writes
    store.gated = True
    first = asyncio.create_task(dispatcher.on_ended(messages[0]))
    await settle()
    assert store.writing == 1  # the first change's write is in flight
    rest = [asyncio.create_task(dispatcher.on_ended(m)) for m in messages[1:]]
    await settle()
    assert store.writing == 1 and not any(t.done() for t in (first, *rest))
    store.let_through(2)
    await asyncio.gather(first, *rest)
    # Two writes for three changes: the first alone, the two that came during it together;
    # what they published is what one after the other published, in that order.
    assert store.summary_writes - writes_before == 2
    assert what(bus.published) == what(reference_bus.published)
    assert summary(store).trials_by_status() == summary(reference.store).trials_by_status()  # type: ignore[arg-type]
    assert summary(store).trials_by_status()["SUCCEEDED"] == 5


async def test_a_change_is_not_done_before_the_write_that_holds_it() -> None:
    dispatcher, store, _ = await gated_dispatcher()
    store.gated = True
    first = asyncio.create_task(dispatcher.on_ended(ended(dispatcher, 0)))
    await settle()
    second = asyncio.create_task(dispatcher.on_ended(ended(dispatcher, 1)))
    await settle()
    store.let_through(1)
    await first
    await settle()
    assert store.writing == 1 and not second.done()  # not acked before its own write
    store.let_through(1)
    await second


async def test_a_failed_write_fails_every_change_that_waited_for_it_and_storage_wins() -> None:
    dispatcher, store, _ = await gated_dispatcher()
    before = store.blobs[STATE]
    messages = [ended(dispatcher, i) for i in range(3)]
    store.gated = True
    store.fail_next = True
    tasks = [asyncio.create_task(dispatcher.on_ended(messages[0]))]
    await settle()
    tasks += [asyncio.create_task(dispatcher.on_ended(m)) for m in messages[1:]]
    await settle()
    store.gated = False
    store.let_through(1)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results  # every delivery retried
    assert store.blobs[STATE] == before  # nothing of them was written
    assert "exp1" not in dispatcher.states._cache  # the next delivery loads what is stored
    for m in messages:  # the retries apply on the stored state, each once
        await dispatcher.on_ended(m)
    assert summary(store).trials_by_status()["SUCCEEDED"] == 5


async def test_messages_of_a_write_whose_publish_failed_go_out_with_the_next_delivery() -> None:
    """The summary was written with its outbox, then publishing failed: the delivery is retried,
    and the outbox is published again (consumers dedupe) before anything else happens."""
    store, bus = FakeStore(), FlakyBus()
    dispatcher = Dispatcher(bus, store, Policy())  # type: ignore[arg-type]
    await dispatcher.on_start(ExperimentStart(experiment_id="exp1", config=CONFIG))
    await run_until(dispatcher, bus, 2)
    await answer_requests(dispatcher, bus)
    message = ended(dispatcher, 0)
    bus.fail_next = True
    with pytest.raises(TransientError):
        await dispatcher.on_ended(message)
    lost: list[Message] = checked_outbox(summary(store))
    assert any(isinstance(m, TrialSubmit) for m in lost)
    bus.published.clear()
    await dispatcher.on_ended(message)  # the retry
    ids = {m.message_id for m in bus.published}
    assert all(m.message_id in ids for m in lost), "the written outbox was never published"


def due_tick(dispatcher: Dispatcher, chain: str | None = None) -> Ticket:
    """A tick of the live chain (or of ``chain``), due now."""
    state = dispatcher.states._cache["exp1"].state
    return Ticket(experiment_id="exp1", purpose="dispatcher.tick", due=utcnow(),
                  state={"chain": chain or state.tick_id})


def ticks(bus: FakeBus) -> list[Ticket]:
    return [m for m in bus.published if isinstance(m, Ticket)]


async def test_a_tick_that_decides_nothing_continues_its_chain_without_a_write() -> None:
    # Every experiment ticks each second: a write per tick made an experiment's storage and
    # dispatcher cost grow with its duration (50 experiments at once: 3.5x per trial).
    dispatcher, store, bus = await gated_dispatcher()
    await dispatcher.on_ticket(due_tick(dispatcher))  # the first tick after the trials' changes
    chain = dispatcher.states._cache["exp1"].state.tick_id
    writes, stored = store.summary_writes, store.blobs[STATE]
    bus.published.clear()
    for _ in range(3):
        await dispatcher.on_ticket(due_tick(dispatcher))
    assert store.summary_writes == writes and store.blobs[STATE] == stored
    assert [t.state["chain"] for t in ticks(bus)] == [chain] * 3  # the chain goes on
    assert summary(store).tick_id == chain and not summary(store).outbox

    # A progress note kept in memory (RUNNING) is written by the next tick, still the same chain.
    trial = next(iter(dispatcher.states._cache["exp1"].state.running()))
    await dispatcher.on_status(TrialStatusChanged(experiment_id="exp1", trial_id=trial.trial_id,
                                                  parameter_id=trial.sequence_id, attempt=1,
                                                  status=TrialStatus.RUNNING))
    assert store.summary_writes == writes
    await dispatcher.on_ticket(due_tick(dispatcher))
    assert store.summary_writes == writes + 1
    assert summary(store).trials[trial.trial_id].status == TrialStatus.RUNNING


async def test_a_tick_chain_is_renewed_and_written_so_a_doubled_chain_ends() -> None:
    dispatcher, store, bus = await gated_dispatcher()
    await dispatcher.on_ticket(due_tick(dispatcher))
    chain = dispatcher.states._cache["exp1"].state.tick_id
    assert chain is not None
    # A redelivery after a crash left two tickets of the chain; both tick while it lives.
    await dispatcher.on_ticket(due_tick(dispatcher, chain))
    await dispatcher.on_ticket(due_tick(dispatcher, chain))
    assert len(ticks(bus)) >= 2 and dispatcher.states._cache["exp1"].state.tick_id == chain
    dispatcher.policy = replace(dispatcher.policy, tick_renew=0.0)
    writes = store.summary_writes
    bus.published.clear()
    await dispatcher.on_ticket(due_tick(dispatcher, chain))  # renewed: a new chain, written
    renewed = summary(store).tick_id
    assert store.summary_writes == writes + 1 and renewed not in (None, chain)
    assert [t.state["chain"] for t in ticks(bus)] == [renewed]
    bus.published.clear()
    await dispatcher.on_ticket(due_tick(dispatcher, chain))  # the other ticket of the old chain
    assert ticks(bus) == [] and store.summary_writes == writes + 1
