"""The experiment's own events: start, stop, resume, update of its limits, error."""

from __future__ import annotations

from datetime import datetime

from shared.messages import ExperimentStatus, ExperimentStatusChanged, ExperimentUpdate, Message, TrialStatus
from shared.state import ExperimentState

from .plan import Plan, Policy, plan_with_limits
from .steps import OUT_OF_TIME, begin_drain, fill_slots, next_tick, status_change, withdrawals

#: What ``resume`` applies to: every ended experiment. A DONE one whose trials or time are used
#: up ends DONE again at once, unless ``update`` raised its limits first.
RESUMABLE_STATUSES = (ExperimentStatus.STOPPED, ExperimentStatus.ERROR, ExperimentStatus.DONE)


def start_experiment(experiment_id: str, plan: Plan, policy: Policy, now: datetime,
                     start_message_id: str) -> tuple[ExperimentState, list[Message]]:
    """A new experiment's state and its first messages: status, suggestions, the first tick."""
    state = ExperimentState(experiment_id=experiment_id, started_at=now,
                            optimize_mode=plan.optimize_mode, seen_starts=[start_message_id])
    out: list[Message] = [ExperimentStatusChanged(experiment_id=experiment_id,
                                                  status=ExperimentStatus.RUNNING)]
    out += fill_slots(state, plan, now)
    out += next_tick(state, policy, now)
    return state, out


def apply_stop(state: ExperimentState, reason: str, now: datetime) -> list[Message]:
    """The user stops the experiment: running trials are cancelled, it ends STOPPED."""
    return begin_drain(state, ExperimentStatus.STOPPED, TrialStatus.USER_CANCELED, reason, now)


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
    out = status_change(state, ExperimentStatus.RUNNING, now)
    out += fill_slots(state, plan, now)
    if not state.finished:
        out += next_tick(state, policy, now)
    return out


def apply_update(state: ExperimentState, plan: Plan, msg: ExperimentUpdate,
                 now: datetime) -> tuple[Plan, list[Message]]:
    """New limits (``nnictl update``): the plan they make and what follows at once.

    More slots are filled at once; fewer kill nothing (freed slots are not refilled past the new
    number); a lower ``maxTrialNumber`` drops the suggestions waiting beyond it (and tells the
    tuner, whose advisor may count on their results); more time takes
    an experiment whose time had run out back to RUNNING. A finished experiment keeps them for
    its resume. Repeating an update changes nothing more.
    """
    state.updated_limits.update(msg.limits())
    plan = plan_with_limits(plan, state.updated_limits)
    out: list[Message] = []
    if plan.max_trials is not None:
        room = max(plan.max_trials - state.trials_created, 0)
        dropped = [ready.parameter_id for ready in state.ready[room:]]
        del state.ready[room:]
        asked = max(room - len(state.ready), 0)  # requests still wanted
        dropped += state.requested[asked:]
        del state.requested[asked:]
        out += withdrawals(state.experiment_id, dropped)
    if state.status not in (ExperimentStatus.RUNNING, ExperimentStatus.NO_MORE_TRIAL):
        return plan, out
    if (state.status == ExperimentStatus.NO_MORE_TRIAL and state.reason == OUT_OF_TIME
            and (plan.max_duration is None or state.elapsed_seconds(now) < plan.max_duration)):
        state.reason = None
        out += status_change(state, ExperimentStatus.RUNNING, now)
    return plan, out + fill_slots(state, plan, now)


def apply_error(state: ExperimentState, reason: str, now: datetime) -> list[Message]:
    """A service cannot go on with the experiment: cancel what runs, end in ERROR."""
    return begin_drain(state, ExperimentStatus.ERROR, TrialStatus.SYS_CANCELED, reason, now)
