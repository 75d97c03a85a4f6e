"""The dashboard's buttons: the command messages ``tunebus stop/resume/update/trial kill``
publish, decided from the same checks of the experiment's state. Pure: the caller publishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shared.config import parse_duration
from shared.messages import (
    ExperimentResume,
    ExperimentStatus,
    ExperimentStop,
    ExperimentUpdate,
    Message,
    TrialStatus,
    TrialStopRequested,
)
from shared.state import ExperimentState

__all__ = ["ActionRefused", "kill_command", "resume_command", "stop_command", "update_command"]

_ENDED = (ExperimentStatus.DONE, ExperimentStatus.STOPPED, ExperimentStatus.ERROR)
KILL_REASON = "killed by user (dashboard)"


class ActionRefused(ValueError):
    """The action does not apply (HTTP ``status``); the message says why, as the CLI would."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def _started(experiment_id: str, state: ExperimentState | None) -> ExperimentState:
    if state is None:
        raise ActionRefused(f"experiment {experiment_id} has not started yet")
    return state


def stop_command(experiment_id: str, state: ExperimentState | None) -> Message:
    """``experiment.stop``: running trials are cancelled, the experiment ends STOPPED."""
    if state is not None and state.status in _ENDED:
        raise ActionRefused(f"experiment {experiment_id} already ended ({state.status.value}); "
                            "nothing to stop")
    return ExperimentStop(experiment_id=experiment_id)


def resume_command(experiment_id: str, state: ExperimentState | None, has_config: bool) -> Message:
    """``experiment.resume`` for an ended experiment that did start."""
    status = _started(experiment_id, state).status
    if status == ExperimentStatus.ERROR and not has_config:
        raise ActionRefused(f"experiment {experiment_id} never started: fix the config and create it again")
    if status == ExperimentStatus.STOPPING:
        raise ActionRefused(f"experiment {experiment_id} is STOPPING; resume it once it is STOPPED")
    if status not in _ENDED:
        raise ActionRefused(f"experiment {experiment_id} is {status.value}; nothing to resume")
    return ExperimentResume(experiment_id=experiment_id)


_UPDATE_FIELDS = {"trialConcurrency": "trial_concurrency", "maxTrialNumber": "max_trial_number",
                  "maxExperimentDuration": "max_experiment_duration"}


def _duration(value: Any) -> Any:
    """Seconds, or NNI's duration text (``30m``, ``2h``)."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ActionRefused(f"maxExperimentDuration: {exc}", 400) from None
    return value


def update_command(experiment_id: str, state: ExperimentState | None, body: Mapping[str, Any]) -> Message:
    """``experiment.update`` from ``{"trialConcurrency": n, "maxTrialNumber": n,
    "maxExperimentDuration": seconds or "2h"}`` (any of them); bad values are named."""
    unknown = sorted(set(body) - set(_UPDATE_FIELDS))
    if unknown:
        raise ActionRefused(f"unknown limit {unknown[0][:40]!r}; use {', '.join(_UPDATE_FIELDS)}", 400)
    fields = {_UPDATE_FIELDS[k]: (_duration(v) if k == "maxExperimentDuration" else v)
              for k, v in body.items() if v is not None and v != ""}
    if any(isinstance(v, bool) for v in fields.values()):
        raise ActionRefused("limits are numbers, not true/false", 400)
    if state is not None and state.status == ExperimentStatus.STOPPING:
        raise ActionRefused(f"experiment {experiment_id} is STOPPING; update it once it is STOPPED")
    try:
        return ExperimentUpdate(experiment_id=experiment_id, **fields)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = next((k for k, v in _UPDATE_FIELDS.items() if problem["loc"] and v == problem["loc"][0]),
                     "update")
        raise ActionRefused(f"{where}: {problem['msg']}", 400) from None


def kill_command(experiment_id: str, state: ExperimentState | None, trial_id: str) -> Message:
    """``trial.stop_request`` (USER_CANCELED) for a trial that has not ended."""
    trial = None if state is None else state.trials.get(trial_id)
    if trial is None:
        raise ActionRefused(f"experiment {experiment_id} has no trial {trial_id[:40]!r}", 404)
    if trial.ended:
        raise ActionRefused(f"trial {trial_id} already ended ({trial.status.value}); nothing to kill")
    return TrialStopRequested(experiment_id=experiment_id, trial_id=trial_id, reason=KILL_REASON,
                              status=TrialStatus.USER_CANCELED)
