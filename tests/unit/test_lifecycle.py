"""The dispatcher's lifecycle rules, event by event, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.dispatcher import lifecycle
from services.dispatcher.lifecycle import Plan, Policy
from shared.messages import (
    MAX_ERROR_CHARS,
    ExperimentStatus,
    ExperimentStatusChanged,
    ExperimentUpdate,
    SuggestionsWithdrawn,
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
from shared.state import ExperimentState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EXP = "exp1"


def plan(**kw: object) -> Plan:
    base = dict(concurrency=2, max_trials=3, max_duration=None, max_trial_duration=None,
                optimize_mode="maximize", uses_heartbeats=True, lookahead=0)
    base.update(kw)
    return Plan(**base)  # type: ignore[arg-type]


POLICY = Policy(tick_seconds=1, heartbeat_timeout=30, kill_grace=60, max_attempts=2)


def started(p: Plan) -> tuple[ExperimentState, list[object]]:
    return lifecycle.start_experiment(EXP, p, POLICY, T0, "start-1")


def of(msgs: list[object], cls: type) -> list:  # type: ignore[type-arg]
    return [m for m in msgs if isinstance(m, cls)]


def suggest(state: ExperimentState, p: Plan, pid: int, params: dict | None = None) -> list[object]:  # type: ignore[type-arg]
    msg = TrialSuggested(experiment_id=EXP, parameter_id=pid, parameters=params if params is not None
                         else {"x": pid})
    return lifecycle.apply_suggested(state, p, msg, T0)


def first_trial(p: Plan) -> tuple[ExperimentState, str]:
    """An experiment started with ``p`` whose first suggestion became a trial; that trial's id."""
    state, _ = started(p)
    suggest(state, p, 0)
    return state, state.by_sequence()[0].trial_id


def end(state: ExperimentState, p: Plan, trial_id: str, status: TrialStatus = TrialStatus.SUCCEEDED,
        value: float | None = 1.0, attempt: int = 1) -> list[object]:
    trial = state.trials[trial_id]
    msg = TrialEnded(experiment_id=EXP, trial_id=trial_id, parameter_id=trial.sequence_id, attempt=attempt,
                     status=status, final_value=value)
    return lifecycle.apply_ended(state, p, msg, T0 + timedelta(seconds=5))


def report(state: ExperimentState, trial_id: str, status: TrialStatus = TrialStatus.RUNNING,
           at: datetime = T0, attempt: int = 1) -> list[object]:
    """The backend reports a trial's job status (RUNNING by default) at ``at``."""
    msg = TrialStatusChanged(experiment_id=EXP, trial_id=trial_id, attempt=attempt, status=status, time=at,
                             parameter_id=state.trials[trial_id].sequence_id)
    return lifecycle.apply_status(state, msg, at)


def tick(state: ExperimentState, p: Plan, at: datetime) -> list[object]:
    ticket = Ticket(message_id=state.tick_id or "none", experiment_id=EXP, purpose="dispatcher.tick", due=at)
    return lifecycle.apply_tick(state, p, POLICY, ticket, at)


def test_start_asks_for_one_suggestion_per_slot_and_schedules_a_tick() -> None:
    state, out = started(plan())
    assert of(out, SuggestRequest)[0].parameter_ids == [0, 1]
    assert of(out, ExperimentStatusChanged)[0].status == ExperimentStatus.RUNNING
    assert of(out, Ticket)[0].message_id == state.tick_id


def test_suggestion_becomes_a_submitted_trial_once() -> None:
    p = plan()
    state, _ = started(p)
    out = suggest(state, p, 0)
    submit = of(out, TrialSubmit)[0]
    assert submit.sequence_id == 0 and submit.parameters == {"x": 0}
    assert suggest(state, p, 0) == []  # a redelivered suggestion changes nothing
    assert len(state.trials) == 1


def test_ended_trial_frees_its_slot_until_the_limit_then_done() -> None:
    p = plan()
    state, _ = started(p)
    suggest(state, p, 0)
    suggest(state, p, 1)
    first, second = state.by_sequence()
    out = end(state, p, first.trial_id)
    assert of(out, SuggestRequest)[0].parameter_ids == [2]
    assert end(state, p, first.trial_id) == []  # duplicate end
    suggest(state, p, 2)
    assert end(state, p, second.trial_id) == []  # limit of 3 reached: nothing more to ask
    third = state.by_sequence()[2]
    out = end(state, p, third.trial_id)
    assert of(out, ExperimentStatusChanged)[0].status == ExperimentStatus.DONE
    assert state.status == ExperimentStatus.DONE
    assert state.trials_by_status() == {"SUCCEEDED": 3}


def test_exhausted_search_space_ends_done_after_running_trials() -> None:
    p = plan(max_trials=None)
    state, _ = started(p)
    suggest(state, p, 0)
    out = lifecycle.apply_suggested(state, p, TrialSuggested(experiment_id=EXP, parameter_id=1,
                                                             parameters=None), T0)
    assert state.status == ExperimentStatus.NO_MORE_TRIAL
    assert not of(out, SuggestRequest)
    out = end(state, p, state.by_sequence()[0].trial_id)
    assert state.status == ExperimentStatus.DONE


def test_stop_kills_running_trials_and_ends_stopped_when_they_end() -> None:
    p = plan()
    state, _ = started(p)
    suggest(state, p, 0)
    out = lifecycle.apply_stop(state, "user", T0)
    kill = of(out, TrialKill)[0]
    assert kill.status == TrialStatus.USER_CANCELED
    assert state.status == ExperimentStatus.STOPPING
    assert suggest(state, p, 1) == []  # the outstanding request is void
    trial_id = state.by_sequence()[0].trial_id
    out = end(state, p, trial_id, status=TrialStatus.FAILED, value=None)
    assert state.trials[trial_id].status == TrialStatus.USER_CANCELED  # killed on request
    assert state.status == ExperimentStatus.STOPPED


def test_assessor_stop_request_ends_trial_early_stopped() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    out = lifecycle.apply_stop_request(state, TrialStopRequested(experiment_id=EXP, trial_id=trial_id,
                                                                 reason="Medianstop"), T0)
    assert of(out, TrialKill)[0].status == TrialStatus.EARLY_STOPPED
    assert lifecycle.apply_stop_request(state, TrialStopRequested(experiment_id=EXP, trial_id=trial_id,
                                                                  reason="again"), T0) == []
    end(state, p, trial_id, status=TrialStatus.FAILED, value=None)
    assert state.trials[trial_id].status == TrialStatus.EARLY_STOPPED


def test_a_user_kill_ends_the_trial_user_canceled_and_its_slot_is_filled() -> None:
    p = plan(concurrency=1, max_trials=3)
    state, trial_id = first_trial(p)
    out = lifecycle.apply_stop_request(state, TrialStopRequested(
        experiment_id=EXP, trial_id=trial_id, reason="killed by user", status=TrialStatus.USER_CANCELED), T0)
    kill = of(out, TrialKill)[0]
    assert kill.status == TrialStatus.USER_CANCELED and kill.reason == "killed by user"
    out = end(state, p, trial_id, status=TrialStatus.FAILED, value=None)  # the process died of it
    assert state.trials[trial_id].status == TrialStatus.USER_CANCELED
    assert state.trials[trial_id].error == "killed by user"
    assert of(out, SuggestRequest) and state.status == ExperimentStatus.RUNNING  # the experiment goes on


def test_max_trial_duration_kills_the_trial() -> None:
    p = plan(max_trial_duration=10)
    state, trial_id = first_trial(p)
    report(state, trial_id)
    assert not of(tick(state, p, T0 + timedelta(seconds=5)), TrialKill)
    out = tick(state, p, T0 + timedelta(seconds=11))
    assert of(out, TrialKill)[0].reason == "maxTrialDuration exceeded"


def test_max_experiment_duration_stops_new_trials_and_lets_running_ones_finish() -> None:
    # As NNI: when time runs out, no trial is created any more (NO_MORE_TRIAL); those running go
    # on to their end (maxTrialDuration still bounds them) and then the experiment is DONE.
    p = plan(max_duration=60, max_trials=10, lookahead=1)
    state, _ = started(p)
    suggest(state, p, 0)
    suggest(state, p, 1)
    suggest(state, p, 2)  # waits for a slot
    assert [r.parameter_id for r in state.ready] == [2]
    running = [t.trial_id for t in state.by_sequence()]
    lifecycle.apply_heartbeat(state, TrialHeartbeat(experiment_id=EXP, trial_ids=running, replica="r"),
                              T0 + timedelta(seconds=50))
    out = tick(state, p, T0 + timedelta(seconds=61))
    assert not of(out, TrialKill) and not of(out, TrialSubmit) and not of(out, SuggestRequest)
    assert state.status == ExperimentStatus.NO_MORE_TRIAL
    assert [m.status for m in of(out, ExperimentStatusChanged)] == [ExperimentStatus.NO_MORE_TRIAL]
    assert state.ready == [] and state.requested == []
    assert suggest(state, p, 3) == []  # an answer still on its way is dropped
    out = end(state, p, running[0])
    assert not of(out, TrialSubmit) and state.status == ExperimentStatus.NO_MORE_TRIAL
    out = end(state, p, running[1])
    assert state.status == ExperimentStatus.DONE
    assert [m.status for m in of(out, ExperimentStatusChanged)] == [ExperimentStatus.DONE]
    assert sorted(t.status for t in state.trials.values()) == [TrialStatus.SUCCEEDED] * 2


def test_max_experiment_duration_with_nothing_running_ends_done_at_once() -> None:
    p = plan(max_duration=60, lookahead=1)
    state, _ = started(p)  # suggestions asked for, none answered yet
    out = tick(state, p, T0 + timedelta(seconds=61))
    assert state.status == ExperimentStatus.DONE and not of(out, Ticket)


def test_stale_ticks_are_ignored_so_only_one_chain_lives() -> None:
    p = plan()
    state, _ = started(p)
    stale = Ticket(experiment_id=EXP, purpose="dispatcher.tick", due=T0)
    assert lifecycle.apply_tick(state, p, POLICY, stale, T0) == []
    out = tick(state, p, T0 + timedelta(seconds=1))
    assert len(of(out, Ticket)) == 1
    other_chain = Ticket(experiment_id=EXP, purpose="dispatcher.tick", due=T0, state={"chain": "old"})
    assert lifecycle.apply_tick(state, p, POLICY, other_chain, T0 + timedelta(seconds=2)) == []


def test_a_quiet_tick_continues_its_chain_until_the_chain_is_renewed() -> None:
    p = plan()
    state, _ = started(p)
    chain = state.tick_id
    for second in (1, 2, 29):  # nothing to decide: the chain (what the state stores) stays
        [ticket] = tick(state, p, T0 + timedelta(seconds=second))
        assert state.tick_id == chain and ticket.state["chain"] == chain  # type: ignore[attr-defined]
    [ticket] = tick(state, p, T0 + timedelta(seconds=30))  # tick_renew (30 s) after its start
    assert state.tick_id not in (None, chain) and ticket.state["chain"] == state.tick_id  # type: ignore[attr-defined]


def lost_end(state: ExperimentState, p: Plan, trial_id: str, attempt: int) -> list[object]:
    """The ingestor's answer to a lost job with no final result stored."""
    trial = state.trials[trial_id]
    msg = TrialEnded(experiment_id=EXP, trial_id=trial_id, parameter_id=trial.sequence_id, attempt=attempt,
                     status=TrialStatus.FAILED, error="lost", lost=True)
    return lifecycle.apply_ended(state, p, msg, T0 + timedelta(seconds=5), POLICY)


def test_lost_trial_is_checked_in_storage_run_again_then_failed() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    report(state, trial_id)
    lifecycle.apply_heartbeat(state, TrialHeartbeat(experiment_id=EXP, trial_ids=[trial_id], replica="r"),
                              T0 + timedelta(seconds=20))
    assert not of(tick(state, p, T0 + timedelta(seconds=40)), TrialStatusChanged)  # heartbeat 20 s ago
    quiet_chain = state.tick_id
    out = tick(state, p, T0 + timedelta(seconds=51))
    # A tick that decides something starts a new tick chain (its write records it).
    assert state.tick_id != quiet_chain and of(out, Ticket)[0].state["chain"] == state.tick_id
    # Not run again yet: the ingestor first ends it from what it stored, if it finished.
    assert not of(out, TrialSubmit)
    [lost] = of(out, TrialStatusChanged)
    assert lost.lost and lost.attempt == 1 and lost.trial_id == trial_id and "lost" in (lost.error or "")
    assert not of(tick(state, p, T0 + timedelta(seconds=52)), TrialStatusChanged)  # asked once
    [resubmit] = of(lost_end(state, p, trial_id, attempt=1), TrialSubmit)
    assert resubmit.attempt == 2 and resubmit.trial_id == trial_id and not resubmit.resubmit
    # a late end of the first attempt is ignored
    assert end(state, p, trial_id, attempt=1) == [] and not state.trials[trial_id].ended
    report(state, trial_id, at=T0 + timedelta(seconds=52), attempt=2)
    out = tick(state, p, T0 + timedelta(seconds=90))
    assert of(out, TrialStatusChanged)[0].attempt == 2
    out = lost_end(state, p, trial_id, attempt=2)  # the last attempt (max_attempts 2)
    assert state.trials[trial_id].status == TrialStatus.FAILED
    assert not of(out, TrialSubmit)
    assert "lost" in (state.trials[trial_id].error or "")


def test_a_lost_job_whose_final_result_was_stored_succeeds_without_running_again() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    report(state, trial_id)
    tick(state, p, T0 + timedelta(seconds=31))
    out = end(state, p, trial_id, value=0.9)  # the ingestor found the final result
    assert not of(out, TrialSubmit)
    assert state.trials[trial_id].status == TrialStatus.SUCCEEDED
    assert state.trials[trial_id].final_value == 0.9 and state.trials[trial_id].attempt == 1


def test_an_end_that_never_reached_the_ingestor_is_sent_again() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    report(state, trial_id)
    report(state, trial_id, TrialStatus.FAILED, at=T0 + timedelta(seconds=1))
    state.trials[trial_id].error = "Traceback: boom"
    assert not of(tick(state, p, T0 + timedelta(seconds=20)), TrialStatusChanged)
    [again] = of(tick(state, p, T0 + timedelta(seconds=32)), TrialStatusChanged)
    assert again.status == TrialStatus.FAILED and again.error == "Traceback: boom" and not again.lost
    assert not of(tick(state, p, T0 + timedelta(seconds=40)), TrialStatusChanged)  # spaced out
    assert of(tick(state, p, T0 + timedelta(seconds=63)), TrialStatusChanged)  # and repeated


def test_a_waiting_trial_with_no_sign_of_a_submitter_is_submitted_again_same_attempt() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    assert not of(tick(state, p, T0 + timedelta(seconds=59)), TrialSubmit)
    [again] = of(tick(state, p, T0 + timedelta(seconds=61)), TrialSubmit)
    assert again.trial_id == trial_id and again.attempt == 1 and again.resubmit
    # A heartbeat that lists it means a replica runs it (its RUNNING report was lost).
    lifecycle.apply_heartbeat(state, TrialHeartbeat(experiment_id=EXP, trial_ids=[trial_id], replica="r"),
                              T0 + timedelta(seconds=62))
    assert state.trials[trial_id].status == TrialStatus.RUNNING
    assert not of(tick(state, p, T0 + timedelta(seconds=80)), TrialSubmit)


def test_a_heartbeat_of_an_older_attempt_says_nothing_of_the_current_one() -> None:
    # A replica that stalled mid-start may still run attempt 1 after it was given up (reported
    # lost); its beats must neither mark attempt 2 RUNNING nor keep it alive once it is lost.
    p = plan()
    state, trial_id = first_trial(p)
    trial = state.trials[trial_id]
    trial.attempt = 2
    before = trial.last_heartbeat
    old = TrialHeartbeat(experiment_id=EXP, trial_ids=[trial_id], attempts={trial_id: 1}, replica="stalled")
    lifecycle.apply_heartbeat(state, old, T0 + timedelta(seconds=5))
    assert trial.status == TrialStatus.WAITING and trial.last_heartbeat == before
    current = TrialHeartbeat(experiment_id=EXP, trial_ids=[trial_id], attempts={trial_id: 2}, replica="r")
    lifecycle.apply_heartbeat(state, current, T0 + timedelta(seconds=6))
    assert state.trials[trial_id].status == TrialStatus.RUNNING
    assert state.trials[trial_id].last_heartbeat == T0 + timedelta(seconds=6)
    lifecycle.apply_heartbeat(state, old, T0 + timedelta(seconds=30))
    assert state.trials[trial_id].last_heartbeat == T0 + timedelta(seconds=6)


def test_an_azure_ml_trial_whose_watch_went_silent_is_submitted_again_never_run_twice() -> None:
    p = plan(uses_heartbeats=False)
    state, trial_id = first_trial(p)
    report(state, trial_id)
    assert not of(tick(state, p, T0 + timedelta(seconds=599)), TrialSubmit)
    out = tick(state, p, T0 + timedelta(seconds=601))
    [again] = of(out, TrialSubmit)
    assert again.attempt == 1 and again.resubmit  # the same run, adopted and watched anew
    assert not of(out, TrialStatusChanged)  # an AML run is never declared lost


def test_a_lost_tick_chain_is_rearmed_and_a_live_one_is_left_alone() -> None:
    p = plan()
    state, _ = started(p)
    tick(state, p, T0 + timedelta(seconds=1))
    live = state.tick_id
    assert state.tick_due == T0 + timedelta(seconds=6)  # nothing falls due soon: the idle interval
    rearm = Ticket(experiment_id=EXP, purpose="dispatcher.tick", due=T0, state={"rearm": True})
    for second in (5, 15):  # not yet due, then 9 s overdue: tick_stall (10 s) not reached
        assert lifecycle.apply_rearm(state, p, POLICY, rearm, T0 + timedelta(seconds=second)) == []
    assert state.tick_id == live
    out = lifecycle.apply_rearm(state, p, POLICY, rearm, T0 + timedelta(seconds=16))
    assert of(out, Ticket) and state.tick_id not in (live, rearm.message_id)  # a new chain from it
    stale = Ticket(message_id=live or "", experiment_id=EXP, purpose="dispatcher.tick", due=T0)
    assert lifecycle.apply_tick(state, p, POLICY, stale, T0 + timedelta(seconds=17)) == []


def next_due(out: list[object]) -> float:
    """Seconds from the experiment's start to its next tick (the one ticket in ``out``)."""
    [ticket] = of(out, Ticket)
    return (ticket.due - T0).total_seconds()


def test_ticks_wait_the_idle_interval_unless_a_limit_or_timeout_falls_due_sooner() -> None:
    assert (POLICY.tick_seconds, POLICY.tick_idle_seconds) == (1, 5)
    p = plan(max_duration=60)
    state, _ = started(p)
    assert next_due(tick(state, p, T0 + timedelta(seconds=1))) == 6  # suggestions asked: 120 s to wait
    assert next_due(tick(state, p, T0 + timedelta(seconds=54))) == 59  # 6 s left of the experiment
    assert next_due(tick(state, p, T0 + timedelta(seconds=56))) == 57  # 4 s left: a check a second
    # A running trial: its heartbeat timeout (30 s) comes near.
    p = plan()
    state, trial_id = first_trial(p)
    report(state, trial_id)
    assert next_due(tick(state, p, T0 + timedelta(seconds=20))) == 25
    assert next_due(tick(state, p, T0 + timedelta(seconds=26))) == 27
    # A trial not started yet whose maxTrialDuration is shorter than the idle interval.
    p = plan(max_trial_duration=3)
    state, _ = first_trial(p)
    assert next_due(tick(state, p, T0 + timedelta(seconds=1))) == 2
    # Idle interval set to the tick's own: every tick a second apart, as before.
    state, _ = started(plan())
    ticket = Ticket(message_id=state.tick_id or "", experiment_id=EXP, purpose="dispatcher.tick", due=T0)
    every_second = Policy(tick_seconds=1, tick_idle_seconds=1)
    assert next_due(lifecycle.apply_tick(state, plan(), every_second, ticket, T0 + timedelta(seconds=1))) == 2


def test_unanswered_suggestions_are_asked_again_then_the_experiment_errs() -> None:
    p = plan()
    state, _ = started(p)
    heard = []
    at = T0
    for _ in range(6):
        at += timedelta(seconds=121)
        out = tick(state, p, at)
        heard += of(out, SuggestRequest)
    assert [r.parameter_ids for r in heard] == [[0, 1]] * 5
    assert state.status == ExperimentStatus.STOPPING or state.finished
    assert state.drain_to == ExperimentStatus.ERROR or state.status == ExperimentStatus.ERROR
    assert "tuner answered no suggestion" in (state.reason or "")


def test_an_answer_resets_the_suggestion_clock() -> None:
    p = plan()
    state, _ = started(p)
    answer = TrialSuggested(experiment_id=EXP, parameter_id=0, parameters={"x": 0})
    lifecycle.apply_suggested(state, p, answer, T0 + timedelta(seconds=100))
    assert not of(tick(state, p, T0 + timedelta(seconds=150)), SuggestRequest)
    assert of(tick(state, p, T0 + timedelta(seconds=221)), SuggestRequest)


def test_many_slots_are_asked_for_in_batches() -> None:
    p = plan(concurrency=100, max_trials=1000)
    _, out = started(p)
    batches = [r.parameter_ids for r in of(out, SuggestRequest)]
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert [i for batch in batches for i in batch] == list(range(100))


def test_a_job_whose_end_was_reported_is_not_lost_while_its_metrics_are_ingested() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    report(state, trial_id)
    report(state, trial_id, TrialStatus.SUCCEEDED, at=T0 + timedelta(seconds=1))
    # The ingestor is slow: no heartbeat (the process is gone) and no trial.ended yet.
    out = tick(state, p, T0 + timedelta(seconds=60))
    assert not of(out, TrialSubmit) and not state.trials[trial_id].ended


def test_lookahead_keeps_a_suggestion_ready_and_fills_a_freed_slot_at_once() -> None:
    p = plan(lookahead=1, max_trials=4)
    state, out = started(p)
    assert of(out, SuggestRequest)[0].parameter_ids == [0, 1, 2]
    assert of(suggest(state, p, 0), TrialSubmit)
    assert of(suggest(state, p, 1), TrialSubmit)
    assert suggest(state, p, 2) == []  # both slots busy: it waits, ready
    assert [r.parameter_id for r in state.ready] == [2]
    first = state.by_sequence()[0]
    out = end(state, p, first.trial_id)
    assert of(out, TrialSubmit)[0].sequence_id == 2  # no round trip to the tuner
    assert of(out, SuggestRequest)[0].parameter_ids == [3]  # the last one the limit allows
    suggest(state, p, 3)
    while state.running():
        end(state, p, state.running()[0].trial_id)
    assert len(state.trials) == 4 and state.status == ExperimentStatus.DONE


def test_stop_discards_ready_suggestions() -> None:
    p = plan(lookahead=1)
    state, _ = started(p)
    suggest(state, p, 0)
    suggest(state, p, 1)
    suggest(state, p, 2)
    lifecycle.apply_stop(state, "user", T0)
    assert state.ready == []
    for trial in list(state.trials.values()):
        end(state, p, trial.trial_id, status=TrialStatus.FAILED, value=None)
    assert state.status == ExperimentStatus.STOPPED and len(state.trials) == 2


def test_heartbeats_do_not_extend_the_grace_of_a_trial_asked_to_die() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    lifecycle.apply_stop_request(state, TrialStopRequested(experiment_id=EXP, trial_id=trial_id,
                                                           reason="Medianstop"), T0)
    for second in range(0, 70, 5):  # the replica keeps reporting the (stuck) trial alive
        lifecycle.apply_heartbeat(state, TrialHeartbeat(experiment_id=EXP, trial_ids=[trial_id], replica="r"),
                                  T0 + timedelta(seconds=second))
    out = tick(state, p, T0 + timedelta(seconds=61))
    assert state.trials[trial_id].status == TrialStatus.EARLY_STOPPED
    assert of(out, TrialEnded)[0].status == TrialStatus.EARLY_STOPPED


# ---------------------------------------------------------------- resume


def _stopped_after_one_trial(p: Plan) -> tuple[ExperimentState, str]:
    state, _ = started(p)
    suggest(state, p, 0)
    first = state.by_sequence()[0].trial_id
    end(state, p, first)
    suggest(state, p, 1)
    lifecycle.apply_stop(state, "user", T0 + timedelta(seconds=10))
    end(state, p, state.by_sequence()[1].trial_id, status=TrialStatus.USER_CANCELED, value=None)
    assert state.status == ExperimentStatus.STOPPED
    return state, first


def test_resume_runs_a_stopped_experiment_again_within_its_limits() -> None:
    # As nnictl resume: the trials so far stay (a cancelled one counts towards maxTrialNumber),
    # new ones start in the free slots, and it ends DONE at the limit.
    p = plan(concurrency=1, max_trials=3)
    state, _ = _stopped_after_one_trial(p)
    at = T0 + timedelta(minutes=5)
    out = lifecycle.apply_resume(state, p, POLICY, at)
    assert state.status == ExperimentStatus.RUNNING and state.reason is None and state.ended_at is None
    assert [m.status for m in of(out, ExperimentStatusChanged)] == [ExperimentStatus.RUNNING]
    [request] = of(out, SuggestRequest)
    assert request.parameter_ids == [2]  # ids go on from where they were
    assert len(of(out, Ticket)) == 1 and state.tick_id == of(out, Ticket)[0].message_id
    suggest(state, p, 2)
    end(state, p, state.by_sequence()[2].trial_id)
    assert state.status == ExperimentStatus.DONE
    assert [t.status for t in state.by_sequence()] == [
        TrialStatus.SUCCEEDED, TrialStatus.USER_CANCELED, TrialStatus.SUCCEEDED]


def test_resume_leaves_a_running_or_stopping_experiment_alone() -> None:
    p = plan()
    state, _ = started(p)
    assert lifecycle.apply_resume(state, p, POLICY, T0) == []  # running
    assert state.status == ExperimentStatus.RUNNING
    suggest(state, p, 0)
    lifecycle.apply_stop(state, "user", T0)
    assert state.status == ExperimentStatus.STOPPING
    assert lifecycle.apply_resume(state, p, POLICY, T0) == []
    assert state.status == ExperimentStatus.STOPPING


def test_a_done_experiment_at_its_limit_ends_done_again_when_resumed() -> None:
    p = plan(concurrency=1, max_trials=1)
    state, _ = started(p)
    suggest(state, p, 0)
    end(state, p, state.by_sequence()[0].trial_id)
    out = lifecycle.apply_resume(state, p, POLICY, T0 + timedelta(minutes=1))
    assert [m.status for m in of(out, ExperimentStatusChanged)] == [ExperimentStatus.RUNNING,
                                                                    ExperimentStatus.DONE]
    assert state.status == ExperimentStatus.DONE and not of(out, SuggestRequest)


def test_a_resumed_experiment_with_no_trial_left_ends_done_at_once() -> None:
    p = plan(concurrency=1, max_trials=2)
    state, _ = _stopped_after_one_trial(p)
    out = lifecycle.apply_resume(state, p, POLICY, T0 + timedelta(minutes=5))
    assert state.status == ExperimentStatus.DONE and not of(out, SuggestRequest) and not of(out, Ticket)


def test_max_experiment_duration_counts_only_the_time_it_ran() -> None:
    # Stopped 5 s into a 60 s budget, resumed an hour later: 55 s are left (NNI counts
    # execDuration only while the experiment runs).
    p = plan(concurrency=1, max_trials=10, max_duration=60)
    state, _ = _stopped_after_one_trial(p)
    assert state.ended_at == T0 + timedelta(seconds=5)
    resumed = T0 + timedelta(hours=1)
    lifecycle.apply_resume(state, p, POLICY, resumed)
    assert state.elapsed_seconds(resumed) == 5
    assert state.elapsed_seconds(resumed + timedelta(seconds=7)) == 12
    tick(state, p, resumed + timedelta(seconds=50))
    assert state.status == ExperimentStatus.RUNNING
    tick(state, p, resumed + timedelta(seconds=56))
    assert state.status in (ExperimentStatus.NO_MORE_TRIAL, ExperimentStatus.DONE)
    assert state.reason == "maxExperimentDuration reached"


# ---------------------------------------------------------------- update (nnictl update)


def update(state: ExperimentState, p: Plan, at: datetime = T0, **limits: float) -> tuple[Plan, list[object]]:
    msg = ExperimentUpdate(experiment_id=EXP, **limits)  # type: ignore[arg-type]
    return lifecycle.apply_update(state, p, msg, at)


def test_raising_the_concurrency_fills_the_new_slots_at_once() -> None:
    p = plan(concurrency=1, max_trials=10)
    state, _ = started(p)
    suggest(state, p, 0)
    p, out = update(state, p, trial_concurrency=3)
    assert p.concurrency == 3 and state.updated_limits == {"trialConcurrency": 3}
    assert of(out, SuggestRequest)[0].parameter_ids == [1, 2]
    suggest(state, p, 1)
    suggest(state, p, 2)
    assert len(state.running()) == 3


def test_lowering_the_concurrency_kills_nothing_and_starts_fewer() -> None:
    p = plan(concurrency=2, max_trials=10)
    state, _ = started(p)
    suggest(state, p, 0)
    suggest(state, p, 1)
    p, out = update(state, p, trial_concurrency=1)
    assert not of(out, TrialKill) and len(state.running()) == 2
    end(state, p, state.by_sequence()[0].trial_id)
    assert len(state.running()) == 1 and not state.ready  # the freed slot is not refilled
    out = end(state, p, state.by_sequence()[1].trial_id)
    assert of(out, SuggestRequest)  # one slot again


def test_lowering_max_trials_drops_what_waits_beyond_it() -> None:
    p = plan(concurrency=1, max_trials=10, lookahead=2)
    state, _ = started(p)
    suggest(state, p, 0)
    suggest(state, p, 1)  # waits for the slot
    assert [r.parameter_id for r in state.ready] == [1] and state.requested == [2]
    p, out = update(state, p, max_trial_number=1)
    assert p.max_trials == 1 and state.ready == [] and state.requested == []
    # The tuner hears which ids will never run (an advisor's round may be counting on them).
    assert [m.parameter_ids for m in of(out, SuggestionsWithdrawn)] == [[1, 2]]
    end(state, p, state.by_sequence()[0].trial_id)
    assert state.status == ExperimentStatus.DONE and len(state.trials) == 1


def test_an_update_that_drops_nothing_withdraws_nothing() -> None:
    p = plan(concurrency=1, max_trials=10, lookahead=2)
    state, _ = started(p)
    suggest(state, p, 0)
    _, out = update(state, p, max_trial_number=4)
    assert not of(out, SuggestionsWithdrawn) and state.requested == [1, 2]


def test_more_time_brings_an_experiment_out_of_no_more_trial() -> None:
    p = plan(concurrency=1, max_trials=10, max_duration=60, lookahead=1)
    state, _ = started(p)
    suggest(state, p, 0)
    tick(state, p, T0 + timedelta(seconds=61))
    assert state.status == ExperimentStatus.NO_MORE_TRIAL
    p, out = update(state, p, T0 + timedelta(seconds=62), max_experiment_duration=3600)
    assert state.status == ExperimentStatus.RUNNING and state.reason is None
    assert of(out, SuggestRequest)


def test_a_done_experiment_runs_more_trials_after_an_update_and_a_resume() -> None:
    p = plan(concurrency=1, max_trials=1)
    state, _ = started(p)
    suggest(state, p, 0)
    end(state, p, state.by_sequence()[0].trial_id)
    assert state.status == ExperimentStatus.DONE
    p, out = update(state, p, max_trial_number=2)
    assert out == [] and state.status == ExperimentStatus.DONE  # takes effect on resume
    out = lifecycle.apply_resume(state, p, POLICY, T0 + timedelta(minutes=1))
    assert state.status == ExperimentStatus.RUNNING and of(out, SuggestRequest)[0].parameter_ids == [1]


def test_an_update_needs_a_limit_and_positive_values() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least one"):
        ExperimentUpdate(experiment_id=EXP)
    with pytest.raises(ValidationError):
        ExperimentUpdate(experiment_id=EXP, trial_concurrency=0)
    with pytest.raises(ValidationError):
        ExperimentUpdate(experiment_id=EXP, max_experiment_duration=-1)


# ---------------------------------------------------------------- live intermediate results


def progress(trial: object, count: int, value: float, attempt: int = 1) -> TrialProgress:
    return TrialProgress(experiment_id=EXP, trial_id=trial.trial_id,  # type: ignore[attr-defined]
                         parameter_id=trial.sequence_id, attempt=attempt,  # type: ignore[attr-defined]
                         metric_count=count, last_intermediate=value)


def test_progress_is_noted_while_the_trial_runs_without_a_write() -> None:
    p = plan()
    state, _ = started(p)
    suggest(state, p, 0)
    trial = state.by_sequence()[0]
    assert lifecycle.apply_progress(state, progress(trial, 1, 0.5), T0) == []
    assert lifecycle.apply_progress(state, progress(trial, 3, 0.7), T0) == []
    assert lifecycle.apply_progress(state, progress(trial, 2, 0.6), T0) == []  # late: older than known
    assert (trial.last_intermediate, trial.metric_count) == (0.7, 3)
    lifecycle.apply_progress(state, progress(trial, 6, 0.1, attempt=2), T0)
    assert trial.last_intermediate == 0.7  # another attempt's
    end(state, p, trial.trial_id)
    lifecycle.apply_progress(state, progress(trial, 9, 0.2), T0)
    assert trial.metric_count == 0  # ended: trial.ended's count (0 in this helper) stands


def test_a_trial_run_again_starts_its_curve_afresh() -> None:
    p = plan()
    state, _ = started(p)
    suggest(state, p, 0)
    trial = state.by_sequence()[0]
    report(state, trial.trial_id)
    lifecycle.apply_progress(state, progress(trial, 5, 0.7), T0)
    tick(state, p, T0 + timedelta(seconds=31))  # no heartbeat for 30 s: lost
    out = lost_end(state, p, trial.trial_id, attempt=1)  # nothing stored: run again
    assert of(out, TrialSubmit) and trial.attempt == 2
    assert (trial.last_intermediate, trial.metric_count) == (None, 0)
    lifecycle.apply_progress(state, progress(trial, 1, 0.2, attempt=2), T0)
    assert (trial.last_intermediate, trial.metric_count) == (0.2, 1)


def test_a_huge_error_is_kept_to_its_bounded_tail() -> None:
    p = plan()
    state, trial_id = first_trial(p)
    huge = "x" * 1_000_000 + "the last line"
    msg = TrialEnded(experiment_id=EXP, trial_id=trial_id, parameter_id=0, status=TrialStatus.FAILED,
                     error=huge)
    lifecycle.apply_ended(state, p, msg, T0)
    error = state.trials[trial_id].error or ""
    assert len(error) < MAX_ERROR_CHARS + 40 and error.endswith("the last line")
    assert error.startswith(f"[{len(huge) - MAX_ERROR_CHARS} characters cut]")


def test_the_dispatchers_settings_give_every_timing_of_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.dispatcher.service import DispatcherSettings

    monkeypatch.setenv("TUNEBUS_CLAIM_TIMEOUT", "12")
    monkeypatch.setenv("TUNEBUS_TICK_STALL", "3")
    assert DispatcherSettings().policy() == Policy(claim_timeout=12, tick_stall=3)


def test_an_advisor_may_hold_a_request_while_trials_run_but_not_when_none_runs() -> None:
    p = plan(tuner_may_wait=True, concurrency=2, max_trials=10)
    state, _ = started(p)
    suggest(state, p, 0)  # one trial runs; Hyperband holds id 1 until it reports
    at = T0
    for _ in range(8):
        at += timedelta(seconds=121)
        heard = of(tick(state, p, at), SuggestRequest)
        assert [r.parameter_ids for r in heard] == [[1]]  # still asked again, in case it was lost
    assert state.status == ExperimentStatus.RUNNING
    end(state, p, next(iter(state.trials)), status=TrialStatus.FAILED, value=None)
    state.requested = [1]  # the held request only: nothing runs now
    for _ in range(7):
        at += timedelta(seconds=121)
        tick(state, p, at)
    assert "tuner answered no suggestion" in (state.reason or "")


def test_plan_knows_advisors_from_the_tuner_name() -> None:
    config = {"trialConcurrency": 1,
              "tuner": {"name": "Hyperband", "classArgs": {"optimize_mode": "maximize"}}}
    assert lifecycle.plan_from_config(config).tuner_may_wait
    assert not lifecycle.plan_from_config({**config, "tuner": {"name": "TPE"}}).tuner_may_wait
