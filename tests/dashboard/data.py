"""Synthetic experiments for the dashboard's tests and benchmark: a state document with any
number of trials, its experiment.json, results and logs, written to a blob container."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from shared.messages import ExperimentStatus, TrialStatus
from shared.state import ExperimentState, TrialRecord, trial_id_for
from shared.storage import BlobStore, Layout

SEARCH_SPACE = {
    "lr": {"_type": "loguniform", "_value": [1e-5, 1e-1]},
    "layers": {"_type": "choice", "_value": [1, 2, 4]},
    "dropout": {"_type": "uniform", "_value": [0, 0.5]},
}
_ENDED = (TrialStatus.SUCCEEDED, TrialStatus.SUCCEEDED, TrialStatus.SUCCEEDED, TrialStatus.FAILED,
          TrialStatus.EARLY_STOPPED)


def synthetic_state(experiment_id: str, trials: int, *, running: int = 2, seed: int = 7,
                    status: ExperimentStatus = ExperimentStatus.RUNNING) -> ExperimentState:
    """``trials`` trials, the last ``running`` of them RUNNING, the rest ended (mostly
    SUCCEEDED, with a final value that improves noisily with the sequence)."""
    rng = random.Random(seed)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    state = ExperimentState(experiment_id=experiment_id, status=status, started_at=started,
                            optimize_mode="maximize")
    for seq in range(trials):
        trial_id = trial_id_for(experiment_id, seq)
        params = {"lr": 10 ** rng.uniform(-5, -1), "layers": rng.choice([1, 2, 4]),
                  "dropout": rng.uniform(0, 0.5)}
        live = seq >= trials - running
        trial_status = TrialStatus.RUNNING if live else rng.choice(_ENDED)
        begin = started + timedelta(seconds=seq)
        value = None if live or trial_status == TrialStatus.FAILED else (
            1 - 1 / (1 + seq / 50) + rng.gauss(0, 0.05))
        state.trials[trial_id] = TrialRecord(
            trial_id=trial_id, sequence_id=seq, parameters=params, status=trial_status,
            submitted_at=begin, started_at=begin, ended_at=None if live else begin + timedelta(seconds=30),
            final_value=value, last_intermediate=value, metric_count=3 if value is not None else 0,
            error="Traceback: boom" if trial_status == TrialStatus.FAILED else None)
    state.next_parameter_id = trials
    state.trials_created = trials
    return state


async def store_experiment(store: BlobStore, state: ExperimentState, *, max_trials: int = 20_000) -> str:
    """Write the state and its experiment.json (with a search space); returns the state's etag."""
    layout = Layout(state.experiment_id)
    config = {"experimentName": "synthetic", "trialConcurrency": 2, "maxTrialNumber": max_trials,
              "maxExperimentDuration": 3600, "searchSpace": SEARCH_SPACE,
              "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
              "trainingService": {"platform": "local"}, "trialCommand": "python3 trial.py"}
    await store.write_json(layout.experiment_doc, {"experiment_id": state.experiment_id, "config": config})
    return await store.write_document(layout.state_doc, state.model_dump_json().encode())


async def store_results(store: BlobStore, experiment_id: str, trial_id: str, values: list[float],
                        final: float | None = None) -> None:
    """The trial's results blob as the trial SDK writes it: one JSON line per report."""
    lines = [{"sequence": i, "kind": "PERIODICAL", "value": v} for i, v in enumerate(values)]
    if final is not None:
        lines.append({"sequence": len(values), "kind": "FINAL", "value": final})
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    await store.write_bytes(Layout(experiment_id).results_blob(trial_id), body)
