"""The steps the lifecycle's events share: status changes, the tick chain, kills, draining and
filling free slots with suggestions (asking the tuner for more)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.messages import (
    MAX_SUGGEST_BATCH,
    ExperimentStatus,
    ExperimentStatusChanged,
    Message,
    SuggestionsWithdrawn,
    SuggestRequest,
    Ticket,
    TrialKill,
    TrialStatus,
    TrialSubmit,
)
from shared.state import ExperimentState, TrialRecord, trial_id_for

from .plan import Plan, Policy

OUT_OF_TIME = "maxExperimentDuration reached"


def status_change(state: ExperimentState, status: ExperimentStatus, now: datetime,
                   reason: str | None = None) -> list[Message]:
    """Move the experiment to ``status`` (a finished one stops its tick chain); announce it."""
    if state.status == status:
        return []
    state.status = status
    state.reason = reason if reason is not None else state.reason
    if state.finished:
        state.ended_at = now
        state.tick_id = None  # the tick chain stops
    return [ExperimentStatusChanged(experiment_id=state.experiment_id, status=status, reason=reason)]


def next_tick(state: ExperimentState, policy: Policy, now: datetime, *, renew: bool = True,
              seconds: float | None = None) -> list[Message]:
    """The experiment's next tick, ``seconds`` (``tick_seconds``) from now: of a new chain, which
    becomes the one live chain (``renew``), else of the live chain."""
    wait = policy.tick_seconds if seconds is None else seconds
    ticket = Ticket(experiment_id=state.experiment_id, purpose="dispatcher.tick",
                    due=now + timedelta(seconds=wait))
    state.tick_due = ticket.due
    if renew or state.tick_id is None:
        state.tick_id = ticket.message_id
        state.tick_chain_since = now
    ticket.state["chain"] = state.tick_id
    return [ticket]


def tick_chain(ticket: Ticket) -> str:
    """The tick chain a ticket belongs to (a chain's first ticket, or a re-arm, is its own)."""
    chain = ticket.state.get("chain")
    return chain if isinstance(chain, str) else ticket.message_id


def kill(state: ExperimentState, trial: TrialRecord, status: TrialStatus, reason: str,
          now: datetime) -> list[Message]:
    """Ask the trial's backend to end it as ``status`` (once; its grace period starts now)."""
    if trial.ended or trial.kill_status is not None:
        return []
    trial.kill_status = status
    trial.kill_reason = reason
    trial.last_heartbeat = now  # the kill grace period counts from here
    return [TrialKill(experiment_id=state.experiment_id, trial_id=trial.trial_id, status=status,
                      reason=reason)]


def begin_drain(state: ExperimentState, target: ExperimentStatus, kill_status: TrialStatus,
                 reason: str, now: datetime) -> list[Message]:
    """Stop launching, kill what runs, and end in ``target`` once nothing runs."""
    if state.finished or state.status == ExperimentStatus.STOPPING:
        return []
    state.requested.clear()  # late suggestions are dropped
    state.ready.clear()
    state.drain_to = target
    out: list[Message] = []
    for trial in state.running():
        out += kill(state, trial, kill_status, reason, now)
    out += status_change(state, ExperimentStatus.STOPPING, now, reason)
    return out + settle(state, now)


def stop_creating_trials(state: ExperimentState, reason: str, now: datetime) -> list[Message]:
    """NNI's end of time: no new trial (NO_MORE_TRIAL), the running ones finish, then DONE."""
    if state.status not in (ExperimentStatus.RUNNING, ExperimentStatus.NO_MORE_TRIAL):
        return []
    state.requested.clear()  # late suggestions are dropped
    state.ready.clear()
    return status_change(state, ExperimentStatus.NO_MORE_TRIAL, now, reason)


def settle(state: ExperimentState, now: datetime) -> list[Message]:
    """Finish a draining experiment whose trials have all ended."""
    if state.status != ExperimentStatus.STOPPING or state.running():
        return []
    return status_change(state, state.drain_to or ExperimentStatus.STOPPED, now, state.reason)


def _submit(state: ExperimentState, parameter_id: int, parameters: dict[str, Any],
            now: datetime) -> TrialSubmit:
    trial_id = trial_id_for(state.experiment_id, parameter_id)
    state.trials[trial_id] = TrialRecord(
        trial_id=trial_id, sequence_id=parameter_id, parameters=parameters,
        submitted_at=now, last_heartbeat=now,
    )
    state.trials_created += 1
    return TrialSubmit(experiment_id=state.experiment_id, trial_id=trial_id,
                       sequence_id=parameter_id, parameters=parameters)


def fill_slots(state: ExperimentState, plan: Plan, now: datetime) -> list[Message]:
    """Submit ready suggestions into free slots, ask for more, finish when all is done."""
    if state.status == ExperimentStatus.STOPPING:
        return settle(state, now)
    if state.status not in (ExperimentStatus.RUNNING, ExperimentStatus.NO_MORE_TRIAL):
        return []
    out: list[Message] = []
    while state.ready and len(state.running()) < plan.concurrency:
        ready = state.ready.pop(0)
        out.append(_submit(state, ready.parameter_id, ready.parameters, now))
    running = len(state.running())
    queued = len(state.requested) + len(state.ready)
    if state.status == ExperimentStatus.RUNNING:
        want = plan.concurrency + plan.lookahead - running - queued
        if plan.max_trials is not None:
            want = min(want, plan.max_trials - state.trials_created - queued)
        if want > 0:
            ids = list(range(state.next_parameter_id, state.next_parameter_id + want))
            state.next_parameter_id += want
            if not state.requested:
                state.requested_at = now
            state.requested.extend(ids)
            return [*out, *suggest_requests(state.experiment_id, ids)]
    if running == 0 and queued == 0:
        out += status_change(state, ExperimentStatus.DONE, now)
    return out


def _in_batches(kind: type[SuggestRequest | SuggestionsWithdrawn], experiment_id: str,
                ids: list[int]) -> list[Message]:
    return [kind(experiment_id=experiment_id, parameter_ids=ids[i:i + MAX_SUGGEST_BATCH])
            for i in range(0, len(ids), MAX_SUGGEST_BATCH)]


def withdrawals(experiment_id: str, ids: list[int]) -> list[Message]:
    """``suggest.withdrawn`` messages for parameter ids that will never run, in batches."""
    return _in_batches(SuggestionsWithdrawn, experiment_id, ids)


def suggest_requests(experiment_id: str, ids: list[int]) -> list[Message]:
    """``suggest.request`` messages for ``ids``, in batches the tuner takes."""
    return _in_batches(SuggestRequest, experiment_id, ids)
