"""The periodic check (a tick) and its watchdog's re-arm: time limits, lost jobs, unconfirmed
kills, unanswered suggestion requests; every branch ends a stuck trial's wait with a message."""

from __future__ import annotations

from datetime import datetime

from shared.messages import (
    ExperimentStatus,
    Message,
    Ticket,
    TrialEnded,
    TrialStatus,
    TrialStatusChanged,
    TrialSubmit,
)
from shared.state import ExperimentState, TrialRecord

from .control import apply_error
from .plan import Plan, Policy
from .steps import (
    OUT_OF_TIME,
    fill_slots,
    kill,
    next_tick,
    stop_creating_trials,
    suggest_requests,
    tick_chain,
)


def apply_tick(state: ExperimentState, plan: Plan, policy: Policy, msg: Ticket,
               now: datetime) -> list[Message]:
    """The periodic check: experiment and trial time limits, lost jobs, unconfirmed kills.

    A tick that decides nothing continues its chain, so the stored state (which keeps the
    chain's id, not the time of its last tick) needs no write; one that decides something, or
    whose chain is ``tick_renew`` old, starts a new chain, which its write records."""
    if tick_chain(msg) != state.tick_id or state.finished:
        return []  # a tick of a stale chain: only one chain lives
    out: list[Message] = []
    elapsed = state.elapsed_seconds(now)
    if plan.max_duration is not None and elapsed >= plan.max_duration:
        out += stop_creating_trials(state, OUT_OF_TIME, now)
    for trial in state.running():
        out += _check_trial(state, plan, policy, trial, now)
    out += _check_suggestions(state, plan, policy, now)
    out += fill_slots(state, plan, now)
    if not state.finished:
        since = state.tick_chain_since
        renew = bool(out) or since is None or (now - since).total_seconds() >= policy.tick_renew
        out += next_tick(state, policy, now, renew=renew, seconds=tick_interval(state, plan, policy, now))
    return out


def tick_interval(state: ExperimentState, plan: Plan, policy: Policy, now: datetime) -> float:
    """How long until the next tick: ``tick_idle_seconds`` when none of the checks a tick makes
    can fall due before then, else ``tick_seconds`` (a limit is still kept to about a second).

    Everything else a tick might do follows from an event, which the dispatcher applies when it
    comes; so while an experiment's trials wait or run, its ticks cost little. The deadlines
    mirror :func:`apply_tick`'s checks."""
    idle = policy.tick_idle_seconds
    if idle <= policy.tick_seconds:
        return policy.tick_seconds
    deadlines: list[float] = []
    if plan.max_duration is not None:
        deadlines.append(plan.max_duration - state.elapsed_seconds(now))
    if state.requested and state.status == ExperimentStatus.RUNNING:
        deadlines.append(policy.suggest_timeout - (now - (state.requested_at or now)).total_seconds())
    deadlines += (_trial_deadline(plan, policy, trial, now) for trial in state.running())
    return policy.tick_seconds if any(left < idle for left in deadlines) else idle


def _trial_deadline(plan: Plan, policy: Policy, trial: TrialRecord, now: datetime) -> float:
    """Seconds until :func:`_check_trial` could decide something about ``trial``."""
    silent = (now - (trial.last_heartbeat or now)).total_seconds()
    if trial.kill_status is not None:
        return policy.kill_grace - silent
    left = float("inf")
    if plan.max_trial_duration is not None:  # a trial not started yet may start any moment
        left = plan.max_trial_duration - (trial.duration_seconds(now) or 0.0)
    return min(left, _silence_limit(plan, policy, trial) - silent)


def _silence_limit(plan: Plan, policy: Policy, trial: TrialRecord) -> float:
    """How long a trial that is not being killed may go without a sign before a tick acts:
    its end sent again, its submit sent again, or its job reported lost."""
    if trial.job_ended:
        return policy.ended_timeout
    if trial.status == TrialStatus.WAITING:
        return policy.claim_timeout if plan.uses_heartbeats else policy.remote_silence_timeout
    if not plan.uses_heartbeats:
        return policy.remote_silence_timeout
    return policy.heartbeat_timeout


def apply_rearm(state: ExperimentState, plan: Plan, policy: Policy, msg: Ticket,
                now: datetime) -> list[Message]:
    """The dispatcher's watchdog: a running experiment whose next tick is ``tick_stall``
    overdue (its ticket was lost with the broker) gets this ticket as its chain. A chain that
    was only slow stops at its next tick (its id is no longer the live one)."""
    if state.finished or not tick_overdue(state, policy, now):
        return []
    state.tick_id = msg.message_id
    state.tick_chain_since = None  # the tick renews it: a new chain, written
    return apply_tick(state, plan, policy, msg, now)


def tick_overdue(state: ExperimentState, policy: Policy, now: datetime) -> bool:
    """Whether the experiment's next tick is ``tick_stall`` overdue (not known here: loaded
    since its last tick, e.g. by a restarted dispatcher, its chain is counted from its last
    start or resume)."""
    expected = state.tick_due or state.resumed_at or state.started_at
    return (now - expected).total_seconds() >= policy.tick_stall


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
        return kill(state, trial, TrialStatus.SYS_CANCELED, "maxTrialDuration exceeded", now)
    limit = _silence_limit(plan, policy, trial)
    if silent < limit:
        return []
    if trial.job_ended:
        trial.last_heartbeat = now  # the next repeat, if this one is lost too
        return [_job_end(state, trial)]
    if trial.status == TrialStatus.WAITING or not plan.uses_heartbeats:
        # Its submit was lost, or an Azure ML run's watch went silent: submitting again adopts
        # the run (if there is one) and watches it.
        return _submit_again(state, trial, now)
    return _report_lost(state, trial, f"lost: no heartbeat from its submitter for {limit:.0f} s", now)


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
