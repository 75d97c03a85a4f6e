"""An experiment's lifecycle as pure functions: (state, event, now) -> messages to publish.

Every function mutates the given :class:`ExperimentState` and returns the messages that follow
from the change. The service persists the state (with those messages in its outbox) before
publishing them. Each function is idempotent: applying the same event twice changes nothing
the second time and returns no messages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.algorithms import ADVISORS
from shared.messages import (
    MAX_SUGGEST_BATCH,
    TERMINAL_TRIAL_STATUSES,
    ExperimentStatus,
    ExperimentStatusChanged,
    ExperimentUpdate,
    Message,
    SuggestRequest,
    Ticket,
    TrialEnded,
    TrialHeartbeat,
    TrialKill,
    TrialProgress,
    TrialStatus,
    TrialStatusChanged,
    TrialStopRequested,
    TrialSubmit,
    TrialSuggested,
)
from shared.state import ExperimentState, ReadySuggestion, TrialRecord, trial_id_for

__all__ = [
    "RESUMABLE_STATUSES",
    "Plan",
    "Policy",
    "apply_ended",
    "apply_error",
    "apply_heartbeat",
    "apply_progress",
    "apply_rearm",
    "apply_resume",
    "apply_status",
    "apply_stop",
    "apply_stop_request",
    "apply_suggested",
    "apply_tick",
    "apply_update",
    "plan_from_config",
    "plan_with_limits",
    "start_experiment",
    "suggest_requests",
    "utcnow",
]

#: What ``resume`` applies to: every ended experiment. A DONE one whose trials or time are used
#: up ends DONE again at once, unless ``update`` raised its limits first.
RESUMABLE_STATUSES = (ExperimentStatus.STOPPED, ExperimentStatus.ERROR, ExperimentStatus.DONE)

_OUT_OF_TIME = "maxExperimentDuration reached"


@dataclass(frozen=True)
class Plan:
    """What the dispatcher needs from an experiment's config."""

    concurrency: int
    max_trials: int | None
    max_duration: float | None
    max_trial_duration: float | None
    optimize_mode: str
    uses_heartbeats: bool  # local processes carry a heartbeat; AML runs are watched by tickets
    # Suggestions asked for beyond the free slots, so that a slot that frees is filled at once
    # instead of after a round trip to the tuner (the tuner counts them as pending).
    lookahead: int = 1
    # An NNI advisor (Hyperband) may hold a request until running trials report: while trials
    # run, its silence is no failure (the request is still asked again, in case it was lost).
    tuner_may_wait: bool = False


@dataclass(frozen=True)
class Policy:
    """Timings of the dispatcher's own checks (the deployment's, not the experiment's)."""

    tick_seconds: float = 1.0
    heartbeat_timeout: float = 30.0
    kill_grace: float = 60.0  # a killed trial not confirmed ended by then is ended by the dispatcher
    max_attempts: int = 3  # a trial whose job was lost is run again, up to this many times
    # A WAITING local trial with no sign of its submitter this long: its trial.submit is sent
    # again (a submitter that already runs it recognises the repeat by its claim).
    claim_timeout: float = 60.0
    # A job whose end was reported and no trial.ended came this long after: its end is sent to
    # the ingestor again (the first one was lost with a crash).
    ended_timeout: float = 30.0
    # An Azure ML trial whose watch has not reported this long (its watch ticket was lost):
    # its trial.submit is sent again, which adopts the run and watches it anew.
    remote_silence_timeout: float = 600.0
    # Suggestions asked for and not answered this long are asked for again; after
    # ``max_reasks`` such repeats the experiment ends in ERROR (its tuner does not answer).
    suggest_timeout: float = 120.0
    max_reasks: int = 5
    # A tick chain that has not run this long was lost (with a broker crash): re-armed.
    tick_stall: float = 10.0


def plan_from_config(config: dict[str, Any], lookahead: int = 1) -> Plan:
    """Extract the plan from a validated wire-form config (camelCase, durations in seconds)."""
    tuner = config.get("tuner") or {}
    class_args = tuner.get("classArgs") or {}
    service = config.get("trainingService") or {}
    return Plan(
        concurrency=int(config["trialConcurrency"]),
        max_trials=config.get("maxTrialNumber"),
        max_duration=config.get("maxExperimentDuration"),
        max_trial_duration=config.get("maxTrialDuration"),
        optimize_mode=str(class_args.get("optimize_mode", "maximize")),
        uses_heartbeats=service.get("platform") == "local",
        lookahead=lookahead,
        tuner_may_wait=tuner.get("name") in ADVISORS,
    )


# ---------------------------------------------------------------- helpers


def _status_change(state: ExperimentState, status: ExperimentStatus, now: datetime,
                   reason: str | None = None) -> list[Message]:
    if state.status == status:
        return []
    state.status = status
    state.reason = reason if reason is not None else state.reason
    if state.finished:
        state.ended_at = now
        state.tick_id = None  # the tick chain stops
    return [ExperimentStatusChanged(experiment_id=state.experiment_id, status=status, reason=reason)]


def _next_tick(state: ExperimentState, policy: Policy, now: datetime) -> list[Message]:
    ticket = Ticket(experiment_id=state.experiment_id, purpose="dispatcher.tick",
                    due=now + timedelta(seconds=policy.tick_seconds))
    state.tick_id = ticket.message_id
    return [ticket]


def _kill(state: ExperimentState, trial: TrialRecord, status: TrialStatus, reason: str,
          now: datetime) -> list[Message]:
    if trial.ended or trial.kill_status is not None:
        return []
    trial.kill_status = status
    trial.kill_reason = reason
    trial.last_heartbeat = now  # the kill grace period counts from here
    return [TrialKill(experiment_id=state.experiment_id, trial_id=trial.trial_id, status=status,
                      reason=reason)]


def _begin_drain(state: ExperimentState, target: ExperimentStatus, kill_status: TrialStatus,
                 reason: str, now: datetime) -> list[Message]:
    """Stop launching, kill what runs, and end in ``target`` once nothing runs."""
    if state.finished or state.status == ExperimentStatus.STOPPING:
        return []
    state.requested.clear()  # late suggestions are dropped
    state.ready.clear()
    state.drain_to = target
    out: list[Message] = []
    for trial in state.running():
        out += _kill(state, trial, kill_status, reason, now)
    out += _status_change(state, ExperimentStatus.STOPPING, now, reason)
    return out + _settle(state, now)


def _stop_creating_trials(state: ExperimentState, reason: str, now: datetime) -> list[Message]:
    """NNI's end of time: no new trial (NO_MORE_TRIAL), the running ones finish, then DONE."""
    if state.status not in (ExperimentStatus.RUNNING, ExperimentStatus.NO_MORE_TRIAL):
        return []
    state.requested.clear()  # late suggestions are dropped
    state.ready.clear()
    return _status_change(state, ExperimentStatus.NO_MORE_TRIAL, now, reason)


def _settle(state: ExperimentState, now: datetime) -> list[Message]:
    """Finish a draining experiment whose trials have all ended."""
    if state.status != ExperimentStatus.STOPPING or state.running():
        return []
    return _status_change(state, state.drain_to or ExperimentStatus.STOPPED, now, state.reason)


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


def _fill_slots(state: ExperimentState, plan: Plan, now: datetime) -> list[Message]:
    """Submit ready suggestions into free slots, ask for more, finish when all is done."""
    if state.status == ExperimentStatus.STOPPING:
        return _settle(state, now)
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
        out += _status_change(state, ExperimentStatus.DONE, now)
    return out


def suggest_requests(experiment_id: str, ids: list[int]) -> list[Message]:
    """``suggest.request`` messages for ``ids``, in batches the tuner takes."""
    return [SuggestRequest(experiment_id=experiment_id, parameter_ids=ids[i:i + MAX_SUGGEST_BATCH])
            for i in range(0, len(ids), MAX_SUGGEST_BATCH)]


# ---------------------------------------------------------------- events


def start_experiment(experiment_id: str, plan: Plan, policy: Policy, now: datetime,
                     start_message_id: str) -> tuple[ExperimentState, list[Message]]:
    """A new experiment's state and its first messages: status, suggestions, the first tick."""
    state = ExperimentState(experiment_id=experiment_id, started_at=now,
                            optimize_mode=plan.optimize_mode, seen_starts=[start_message_id])
    out: list[Message] = [ExperimentStatusChanged(experiment_id=experiment_id,
                                                  status=ExperimentStatus.RUNNING)]
    out += _fill_slots(state, plan, now)
    out += _next_tick(state, policy, now)
    return state, out


def apply_suggested(state: ExperimentState, plan: Plan, msg: TrialSuggested,
                    now: datetime) -> list[Message]:
    """A suggestion came back: submit it as a trial (or note that the space is exhausted)."""
    if msg.parameter_id not in state.requested:
        return []  # a duplicate, or asked for before a stop
    state.requested.remove(msg.parameter_id)
    state.reasks = 0
    state.requested_at = now if state.requested else None
    if msg.parameters is None:
        out: list[Message] = []
        if state.status == ExperimentStatus.RUNNING:
            state.requested.clear()
            out += _status_change(state, ExperimentStatus.NO_MORE_TRIAL, now)
        return out + _fill_slots(state, plan, now)
    state.ready.append(ReadySuggestion(parameter_id=msg.parameter_id, parameters=msg.parameters))
    return _fill_slots(state, plan, now)


def apply_status(state: ExperimentState, msg: TrialStatusChanged, now: datetime) -> list[Message]:
    """A backend's report: note when the job started and where to see it."""
    trial = state.trials.get(msg.trial_id)
    if trial is None or trial.ended or msg.attempt != trial.attempt:
        return []
    if msg.job_url:
        trial.job_url = msg.job_url
    if msg.status == TrialStatus.RUNNING and trial.status == TrialStatus.WAITING:
        trial.status = TrialStatus.RUNNING
        trial.started_at = msg.time
    if msg.status in TERMINAL_TRIAL_STATUSES:
        # No more heartbeats will come: the ingestor's trial.ended follows.
        trial.job_ended = True
        trial.job_status = msg.status
        trial.job_lost = msg.lost
        if msg.error:
            trial.error = msg.error  # kept until trial.ended (from the ingestor) confirms the end
    trial.last_heartbeat = now
    return []


def apply_progress(state: ExperimentState, msg: TrialProgress, now: datetime) -> list[Message]:
    """A running trial's latest intermediate result and count, for people watching.

    A progress note (nothing follows from it): the final result and the authoritative count
    come with ``trial.ended``. A late or repeated note, or one of another attempt, is ignored.
    """
    trial = state.trials.get(msg.trial_id)
    if trial is None or trial.ended or msg.attempt != trial.attempt or msg.metric_count <= trial.metric_count:
        return []
    trial.metric_count = msg.metric_count
    trial.last_intermediate = msg.last_intermediate
    return []


def apply_ended(state: ExperimentState, plan: Plan, msg: TrialEnded, now: datetime,
                policy: Policy | None = None) -> list[Message]:
    """The authoritative end of a trial: free its slot, fill slots, maybe finish.

    A job that was lost with no final result stored is run again while attempts are left
    (in the same slot); after the last attempt it FAILED.
    """
    trial = state.trials.get(msg.trial_id)
    if trial is None or trial.ended or msg.attempt != trial.attempt:
        return []
    policy = policy or Policy()
    if msg.lost and trial.kill_status is None and trial.attempt < policy.max_attempts:
        return _run_again(state, trial, now)
    status = msg.status
    if trial.kill_status is not None and status != TrialStatus.SUCCEEDED:
        status = trial.kill_status  # killed on request: the request says how it ended
    trial.status = status
    trial.ended_at = msg.time
    trial.started_at = trial.started_at or msg.time
    trial.final_value = msg.final_value
    trial.last_intermediate = msg.last_intermediate
    trial.metric_count = msg.metric_count
    if msg.error:
        trial.error = msg.error
    elif status == TrialStatus.SUCCEEDED:
        trial.error = None
    if trial.kill_status is not None and trial.kill_reason and status == trial.kill_status:
        trial.error = trial.error or trial.kill_reason
    return _fill_slots(state, plan, now)


def apply_stop(state: ExperimentState, reason: str, now: datetime) -> list[Message]:
    """The user stops the experiment: running trials are cancelled, it ends STOPPED."""
    return _begin_drain(state, ExperimentStatus.STOPPED, TrialStatus.USER_CANCELED, reason, now)


def apply_resume(state: ExperimentState, plan: Plan, policy: Policy, now: datetime) -> list[Message]:
    """Run a STOPPED or ERROR experiment again (``nnictl resume``): its trials stay (cancelled
    ones count towards ``maxTrialNumber``), free slots are filled, a new tick chain starts.
    Anything else (running, DONE, a repeated resume) is left as it is."""
    if state.status not in RESUMABLE_STATUSES:
        return []
    state.ran_before_resume = state.elapsed_seconds(now)
    state.resumed_at = now
    state.ended_at = None
    state.drain_to = None
    state.reason = None
    out = _status_change(state, ExperimentStatus.RUNNING, now)
    out += _fill_slots(state, plan, now)
    if not state.finished:
        out += _next_tick(state, policy, now)
    return out


def apply_update(state: ExperimentState, plan: Plan, msg: ExperimentUpdate,
                 now: datetime) -> tuple[Plan, list[Message]]:
    """New limits (``nnictl update``): the plan they make and what follows at once.

    More slots are filled at once; fewer kill nothing (freed slots are not refilled past the new
    number); a lower ``maxTrialNumber`` drops the suggestions waiting beyond it; more time takes
    an experiment whose time had run out back to RUNNING. A finished experiment keeps them for
    its resume. Repeating an update changes nothing more.
    """
    state.updated_limits.update(msg.limits())
    plan = plan_with_limits(plan, state.updated_limits)
    if plan.max_trials is not None:
        room = max(plan.max_trials - state.trials_created, 0)
        del state.ready[room:]
        del state.requested[max(room - len(state.ready), 0):]
    if state.status not in (ExperimentStatus.RUNNING, ExperimentStatus.NO_MORE_TRIAL):
        return plan, []
    out: list[Message] = []
    if (state.status == ExperimentStatus.NO_MORE_TRIAL and state.reason == _OUT_OF_TIME
            and (plan.max_duration is None or state.elapsed_seconds(now) < plan.max_duration)):
        state.reason = None
        out += _status_change(state, ExperimentStatus.RUNNING, now)
    return plan, out + _fill_slots(state, plan, now)


def plan_with_limits(plan: Plan, limits: dict[str, int | float]) -> Plan:
    """``plan`` with limits changed by updates (NNI config names, as in ``updated_limits``)."""
    changes: dict[str, Any] = {}
    if "trialConcurrency" in limits:
        changes["concurrency"] = int(limits["trialConcurrency"])
    if "maxTrialNumber" in limits:
        changes["max_trials"] = int(limits["maxTrialNumber"])
    if "maxExperimentDuration" in limits:
        changes["max_duration"] = float(limits["maxExperimentDuration"])
    return replace(plan, **changes)


def apply_error(state: ExperimentState, reason: str, now: datetime) -> list[Message]:
    """A service cannot go on with the experiment: cancel what runs, end in ERROR."""
    return _begin_drain(state, ExperimentStatus.ERROR, TrialStatus.SYS_CANCELED, reason, now)


def apply_stop_request(state: ExperimentState, msg: TrialStopRequested, now: datetime) -> list[Message]:
    """An assessor asks to stop a trial early (EARLY_STOPPED), or a user kills it (USER_CANCELED)."""
    trial = state.trials.get(msg.trial_id)
    if trial is None:
        return []
    return _kill(state, trial, msg.status, msg.reason, now)


def apply_heartbeat(state: ExperimentState, msg: TrialHeartbeat, now: datetime) -> list[Message]:
    """A submitter replica still runs these trials (a beat of another attempt says nothing of this one)."""
    for trial_id in msg.trial_ids:
        trial = state.trials.get(trial_id)
        # A trial asked to die keeps its kill grace period: heartbeats do not extend it.
        if trial is None or trial.ended or trial.kill_status is not None:
            continue
        if msg.attempts.get(trial_id, trial.attempt) != trial.attempt:
            continue
        trial.last_heartbeat = now
        if trial.status == TrialStatus.WAITING:
            # Its RUNNING report is late or was lost: the replica says it runs.
            trial.status = TrialStatus.RUNNING
            trial.started_at = trial.started_at or now
    return []


def apply_tick(state: ExperimentState, plan: Plan, policy: Policy, msg: Ticket,
               now: datetime) -> list[Message]:
    """The periodic check: experiment and trial time limits, lost jobs, unconfirmed kills."""
    if msg.message_id != state.tick_id or state.finished:
        return []  # a stale or duplicate tick: only one chain lives
    state.ticked_at = now
    out: list[Message] = []
    elapsed = state.elapsed_seconds(now)
    if plan.max_duration is not None and elapsed >= plan.max_duration:
        out += _stop_creating_trials(state, _OUT_OF_TIME, now)
    for trial in state.running():
        out += _check_trial(state, plan, policy, trial, now)
    out += _check_suggestions(state, plan, policy, now)
    out += _fill_slots(state, plan, now)
    if not state.finished:
        out += _next_tick(state, policy, now)
    return out


def apply_rearm(state: ExperimentState, plan: Plan, policy: Policy, msg: Ticket,
                now: datetime) -> list[Message]:
    """The dispatcher's watchdog: a running experiment whose tick chain has been silent for
    ``tick_stall`` (its ticket was lost with the broker) gets this ticket as its chain. A chain
    that was only slow stops at its next tick (its id is no longer the live one)."""
    if state.finished:
        return []
    last = state.ticked_at or state.resumed_at or state.started_at
    if (now - last).total_seconds() < policy.tick_stall:
        return []
    state.tick_id = msg.message_id
    return apply_tick(state, plan, policy, msg, now)


def _check_suggestions(state: ExperimentState, plan: Plan, policy: Policy, now: datetime) -> list[Message]:
    """Ask again for suggestions not answered in time; give up (ERROR) after a few times."""
    if not state.requested or state.status != ExperimentStatus.RUNNING:
        return []
    since = state.requested_at or now
    if state.requested_at is None:
        state.requested_at = now
    if (now - since).total_seconds() < policy.suggest_timeout:
        return []
    if plan.tuner_may_wait and state.running():
        state.reasks = 0
    if state.reasks >= policy.max_reasks:
        waited = policy.suggest_timeout * (policy.max_reasks + 1)
        return apply_error(state, f"the tuner answered no suggestion request for parameter ids "
                                  f"{state.requested[:5]} in {waited:.0f} s", now)
    state.reasks += 1
    state.requested_at = now
    return suggest_requests(state.experiment_id, list(state.requested))


def _check_trial(state: ExperimentState, plan: Plan, policy: Policy, trial: TrialRecord,
                 now: datetime) -> list[Message]:
    """Keep a trial on its way to an end, whatever was lost: every branch ends in a message."""
    silent = (now - (trial.last_heartbeat or now)).total_seconds()
    if trial.kill_status is not None:
        if silent >= policy.kill_grace:
            # The job's backend never confirmed the kill (its replica may be gone).
            return _end_here(state, trial, trial.kill_status,
                             f"{trial.kill_reason}; kill not confirmed by the backend", now)
        return []
    run_time = trial.duration_seconds(now)
    if plan.max_trial_duration is not None and run_time is not None and run_time >= plan.max_trial_duration:
        return _kill(state, trial, TrialStatus.SYS_CANCELED, "maxTrialDuration exceeded", now)
    if trial.job_ended:
        if silent < policy.ended_timeout:
            return []
        trial.last_heartbeat = now  # the next repeat, if this one is lost too
        return [_job_end(state, trial)]
    if trial.status == TrialStatus.WAITING:
        limit = policy.claim_timeout if plan.uses_heartbeats else policy.remote_silence_timeout
        return _submit_again(state, trial, now) if silent >= limit else []
    if not plan.uses_heartbeats:
        # An Azure ML run whose watch went silent: submitting again adopts the run, watches it.
        return _submit_again(state, trial, now) if silent >= policy.remote_silence_timeout else []
    if silent >= policy.heartbeat_timeout:
        return _report_lost(state, trial, f"lost: no heartbeat from its submitter for "
                                          f"{policy.heartbeat_timeout:.0f} s", now)
    return []


def _submit_again(state: ExperimentState, trial: TrialRecord, now: datetime) -> list[Message]:
    """The same attempt's trial.submit once more (the first was lost, or its watch was)."""
    trial.resubmits += 1
    trial.last_heartbeat = now
    return [TrialSubmit(experiment_id=state.experiment_id, trial_id=trial.trial_id,
                        sequence_id=trial.sequence_id, attempt=trial.attempt, parameters=trial.parameters,
                        resubmit=True)]


def _job_end(state: ExperimentState, trial: TrialRecord) -> TrialStatusChanged:
    """The job's end as the backend reported it, for the ingestor to end the trial from."""
    return TrialStatusChanged(
        experiment_id=state.experiment_id, trial_id=trial.trial_id, parameter_id=trial.sequence_id,
        attempt=trial.attempt, status=trial.job_status or TrialStatus.FAILED, error=trial.error,
        lost=trial.job_lost)


def _report_lost(state: ExperimentState, trial: TrialRecord, error: str, now: datetime) -> list[Message]:
    """A job whose submitter went silent: the ingestor ends it from what it stored, or as lost."""
    trial.job_ended = True
    trial.job_status = TrialStatus.FAILED
    trial.job_lost = True
    trial.error = error
    trial.last_heartbeat = now
    return [_job_end(state, trial)]


def _end_here(state: ExperimentState, trial: TrialRecord, status: TrialStatus, error: str,
              now: datetime) -> list[Message]:
    """End a trial whose backend can no longer tell; announce it like the ingestor would."""
    trial.status = status
    trial.ended_at = now
    trial.error = trial.error or error
    return [TrialEnded(experiment_id=state.experiment_id, trial_id=trial.trial_id,
                       parameter_id=trial.sequence_id, attempt=trial.attempt, status=status,
                       last_intermediate=trial.last_intermediate, error=trial.error)]


def _run_again(state: ExperimentState, trial: TrialRecord, now: datetime) -> list[Message]:
    """Run a lost job's trial again, as a new attempt that reports apart from the lost one."""
    trial.attempt += 1
    trial.job_ended = False
    trial.job_status = None
    trial.job_lost = False
    trial.resubmits = 0
    trial.status = TrialStatus.WAITING
    trial.started_at = None
    trial.last_heartbeat = now
    trial.error = None
    trial.last_intermediate = None  # the new run reports its own curve
    trial.metric_count = 0
    return [TrialSubmit(experiment_id=state.experiment_id, trial_id=trial.trial_id,
                        sequence_id=trial.sequence_id, attempt=trial.attempt, parameters=trial.parameters)]


def utcnow() -> datetime:
    return datetime.now(UTC)
