"""What the tuner service hands its algorithm when trials end: NNI's rule, through the service.

A trial's final result is learned; an early-stopped trial's last intermediate result is learned
in its place (NNI's dispatcher does the same, so that TPE does not forget the losers an assessor
cut short); a failed or cancelled trial without a final result teaches nothing. The same holds
when the session is rebuilt from the dispatcher's record after a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import services.tuner.session as tuner_session
from services.tuner.service import TunerService
from shared.layout import Layout
from shared.messages import SuggestRequest, TrialEnded, TrialStatus, TrialSuggested
from shared.state import ExperimentState, TrialRecord
from tests.integration.fakes import RecordingBus
from tests.unit.test_tuner_replay import _Store

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}}
CONFIG = {"searchSpace": SPACE, "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
          "trialConcurrency": 4}


def _store(record: ExperimentState) -> _Store:
    layout = Layout(record.experiment_id)
    return _Store({layout.experiment_doc: {"config": CONFIG},
                   layout.state_doc: record.model_dump(mode="json")})


def _spy(service: TunerService, experiment_id: str, method: str) -> list[Any]:
    """Record the calls to the session's algorithm's ``method`` (the calls still go through)."""
    tuner = service._sessions[experiment_id].tuner
    real = getattr(tuner, method)
    calls: list[Any] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    setattr(tuner, method, recording)
    return calls


async def test_an_early_stopped_trial_is_learned_by_its_last_intermediate_result() -> None:
    bus = RecordingBus()
    empty = ExperimentState(experiment_id="e1", started_at=datetime.now(UTC))
    service = TunerService(bus, _store(empty))  # type: ignore[arg-type]
    await service.on_suggest(SuggestRequest(experiment_id="e1", parameter_ids=[0, 1, 2, 3, 4]))
    params = {m.parameter_id: m.parameters for m in bus.published if isinstance(m, TrialSuggested)}
    assert sorted(params) == [0, 1, 2, 3, 4]
    learned = _spy(service, "e1", "receive_trial_result")

    ends = [
        TrialEnded(experiment_id="e1", trial_id="t0", parameter_id=0, status=TrialStatus.EARLY_STOPPED,
                   last_intermediate=0.7, metric_count=5),
        TrialEnded(experiment_id="e1", trial_id="t1", parameter_id=1, status=TrialStatus.FAILED,
                   last_intermediate=0.9, metric_count=3),
        TrialEnded(experiment_id="e1", trial_id="t2", parameter_id=2, status=TrialStatus.SUCCEEDED,
                   final_value=0.3, last_intermediate=0.25, metric_count=6),
        TrialEnded(experiment_id="e1", trial_id="t3", parameter_id=3, status=TrialStatus.USER_CANCELED,
                   last_intermediate=0.95, metric_count=2),
        # Stopped while its process ended, after it had reported its final result: that is learned.
        TrialEnded(experiment_id="e1", trial_id="t4", parameter_id=4, status=TrialStatus.EARLY_STOPPED,
                   final_value=0.4, last_intermediate=0.35, metric_count=20),
    ]
    for end in ends:
        await service.on_ended(end)
    await service.on_ended(ends[0])  # a redelivery teaches nothing twice

    assert learned == [(0, params[0], 0.7), (2, params[2], 0.3), (4, params[4], 0.4)]


async def test_a_rebuilt_session_learns_early_stopped_trials_the_same_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    trials = {
        "t0": TrialRecord(trial_id="t0", sequence_id=0, parameters={"x": 0.1},
                          status=TrialStatus.EARLY_STOPPED, last_intermediate=0.6, metric_count=4),
        "t1": TrialRecord(trial_id="t1", sequence_id=1, parameters={"x": 0.2},
                          status=TrialStatus.SUCCEEDED, final_value=0.8, last_intermediate=0.7),
        "t2": TrialRecord(trial_id="t2", sequence_id=2, parameters={"x": 0.3},
                          status=TrialStatus.FAILED, last_intermediate=0.99),
    }
    record = ExperimentState(experiment_id="e2", started_at=datetime.now(UTC), next_parameter_id=3,
                             trials=trials)
    imported: list[dict[str, Any]] = []
    real_create = tuner_session.create_tuner

    def create_tuner(*args: Any, **kwargs: Any) -> Any:
        tuner = real_create(*args, **kwargs)
        real_import = tuner.import_data

        def import_data(data: list[dict[str, Any]]) -> Any:
            imported.extend(data)
            return real_import(data)

        tuner.import_data = import_data
        return tuner

    monkeypatch.setattr(tuner_session, "create_tuner", create_tuner)
    service = TunerService(RecordingBus(), _store(record))  # type: ignore[arg-type]
    await service.on_suggest(SuggestRequest(experiment_id="e2", parameter_ids=[3]))

    values = {entry["parameter"]["x"]: entry["value"] for entry in imported}
    assert values == {0.1: 0.6, 0.2: 0.8, 0.3: None}
