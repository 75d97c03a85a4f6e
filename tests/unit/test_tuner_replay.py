"""A tuner rebuilt from the dispatcher's record does not hand out again what it answered before."""

from __future__ import annotations

from datetime import UTC, datetime

from services.tuner.algorithms import create_tuner
from services.tuner.service import TunerService, _Session
from shared.messages import TrialStatus
from shared.state import ExperimentState, TrialRecord

SPACE = {"x": {"_type": "choice", "_value": [1, 2, 3, 4, 5, 6]}}


def _session() -> _Session:
    return _Session(tuner=create_tuner("GridSearch", {}, SPACE), assessor=None)


def test_answers_lost_with_a_dead_tuner_are_not_handed_out_twice() -> None:
    before = _session()
    answers = dict(TunerService._suggest(before, [0, 1, 2]))  # id 2 answered, then the tuner died
    record = ExperimentState(
        experiment_id="e1", started_at=datetime.now(UTC), requested=[2],
        trials={f"t{pid}": TrialRecord(trial_id=f"t{pid}", sequence_id=pid, parameters=answers[pid],
                                       status=TrialStatus.SUCCEEDED, final_value=0.5)
                for pid in (0, 1)},
    )
    rebuilt = _session()
    TunerService._replay(rebuilt, record)
    # The answer for id 2 is on its way to the dispatcher; the next request is for id 3 only.
    again = dict(TunerService._suggest(rebuilt, [3]))
    assert again[3] not in (answers[0], answers[1], answers[2])
    assert dict(TunerService._suggest(rebuilt, [2]))[2] == answers[2]  # if asked again: the same
