"""What the lifecycle rules read: the experiment's plan (from its config) and the deployment's policy."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shared.algorithms import ADVISORS


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
    # A tick after which no limit or timeout can fall due within this long waits this long for
    # the next (one near a deadline waits ``tick_seconds``): what an experiment costs while its
    # trials wait or run does not grow with ticks that find nothing to do.
    tick_idle_seconds: float = 5.0
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
    # A tick chain whose next tick is this long overdue was lost (with a broker crash): re-armed.
    tick_stall: float = 10.0
    # A tick that decides nothing continues its chain without a state write; the chain is
    # renewed (a new id, written) at least this often, so that a chain doubled by a redelivery
    # after a crash ends within this time.
    tick_renew: float = 30.0


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


def utcnow() -> datetime:
    return datetime.now(UTC)
