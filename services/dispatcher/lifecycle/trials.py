"""A trial's events: its suggestion, its backend's reports, its end, a request to stop it."""

from __future__ import annotations

from datetime import datetime

from shared.messages import (
    TERMINAL_TRIAL_STATUSES,
    ExperimentStatus,
    Message,
    TrialEnded,
    TrialHeartbeat,
    TrialProgress,
    TrialStatus,
    TrialStatusChanged,
    TrialStopRequested,
    TrialSubmit,
    TrialSuggested,
)
from shared.state import ExperimentState, ReadySuggestion, TrialRecord

from .plan import Plan, Policy
from .steps import fill_slots, kill, status_change


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
            out += status_change(state, ExperimentStatus.NO_MORE_TRIAL, now)
        return out + fill_slots(state, plan, now)
    state.ready.append(ReadySuggestion(parameter_id=msg.parameter_id, parameters=msg.parameters))
    return fill_slots(state, plan, now)


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
    return fill_slots(state, plan, now)


def apply_stop_request(state: ExperimentState, msg: TrialStopRequested, now: datetime) -> list[Message]:
    """An assessor asks to stop a trial early (EARLY_STOPPED), or a user kills it (USER_CANCELED)."""
    trial = state.trials.get(msg.trial_id)
    if trial is None:
        return []
    return kill(state, trial, msg.status, msg.reason, now)


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
