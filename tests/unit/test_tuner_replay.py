"""A tuner rebuilt from the dispatcher's record does not hand out again what it answered before."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.tuner.algorithms import create_tuner
from services.tuner.service import TunerService
from services.tuner.session import Session, replay, suggest
from shared.layout import Layout
from shared.messages import TrialStatus
from shared.state import ExperimentState, TrialRecord
from tests.integration.fakes import RecordingBus

SPACE = {"x": {"_type": "choice", "_value": [1, 2, 3, 4, 5, 6]}}


def _session() -> Session:
    return Session(tuner=create_tuner("GridSearch", {}, SPACE), assessor=None)


def test_answers_lost_with_a_dead_tuner_are_not_handed_out_twice() -> None:
    before = _session()
    answers = dict(suggest(before, [0, 1, 2]))  # id 2 answered, then the tuner died
    record = ExperimentState(
        experiment_id="e1", started_at=datetime.now(UTC), requested=[2],
        trials={f"t{pid}": TrialRecord(trial_id=f"t{pid}", sequence_id=pid, parameters=answers[pid],
                                       status=TrialStatus.SUCCEEDED, final_value=0.5)
                for pid in (0, 1)},
    )
    rebuilt = _session()
    replay(rebuilt, record)
    # The answer for id 2 is on its way to the dispatcher; the next request is for id 3 only.
    again = dict(suggest(rebuilt, [3]))
    assert again[3] not in (answers[0], answers[1], answers[2])
    assert dict(suggest(rebuilt, [2]))[2] == answers[2]  # if asked again: the same


class _Store:
    """Just the reads a tuner session is built from."""

    def __init__(self, docs: dict[str, object]) -> None:
        self.docs = docs

    async def read_json(self, path: str) -> tuple[object, str] | None:
        return (self.docs[path], "etag") if path in self.docs else None

    async def read_bytes(self, path: str) -> bytes | None:
        return json.dumps(self.docs[path]).encode() if path in self.docs else None


def _restarted_tuner(experiment_id: str, requested: list[int],
                     concurrency: int) -> tuple[TunerService, RecordingBus]:
    """A tuner service just started over a GridSearch experiment whose trial 0 (``{"x": 1}``)
    succeeded and whose dispatcher still waits for the answers to ``requested``."""
    layout = Layout(experiment_id)
    config = {"searchSpace": SPACE, "tuner": {"name": "GridSearch"}, "trialConcurrency": concurrency}
    record = ExperimentState(
        experiment_id=experiment_id, started_at=datetime.now(UTC), requested=requested,
        trials={"t0": TrialRecord(trial_id="t0", sequence_id=0, parameters={"x": 1},
                                  status=TrialStatus.SUCCEEDED, final_value=0.5)},
    )
    store = _Store({layout.experiment_doc: {"config": config},
                    layout.state_doc: record.model_dump(mode="json")})
    bus = RecordingBus()
    return TunerService(bus, store), bus  # type: ignore[arg-type]


async def test_a_resumed_experiment_gets_suggestions_again() -> None:
    from shared.messages import ExperimentStatus, ExperimentStatusChanged, SuggestRequest, TrialSuggested

    tuner, bus = _restarted_tuner("e1", requested=[1], concurrency=1)
    await tuner.on_experiment_status(ExperimentStatusChanged(experiment_id="e1",
                                                             status=ExperimentStatus.STOPPED))
    await tuner.on_suggest(SuggestRequest(experiment_id="e1", parameter_ids=[1]))
    assert bus.published == []  # a finished experiment's late request builds nothing
    await tuner.on_experiment_status(ExperimentStatusChanged(experiment_id="e1",
                                                             status=ExperimentStatus.RUNNING))
    await tuner.on_suggest(SuggestRequest(experiment_id="e1", parameter_ids=[1]))
    # Answered when the session is rebuilt (the id is owed) and again for the request: the same.
    answers = {json.dumps([m.parameter_id, m.parameters]) for m in bus.published
               if isinstance(m, TrialSuggested)}
    assert len(bus.published) >= 1 and len(answers) == 1
    [answer] = [m for m in bus.published if isinstance(m, TrialSuggested)][:1]
    assert answer.parameter_id == 1
    assert answer.parameters is not None and answer.parameters != {"x": 1}  # not the point already run


async def test_a_rebuilt_session_gives_the_answers_the_dead_process_owed() -> None:
    """The process that died may have taken the dispatcher's requests and put them off (an
    advisor waiting for its step to end): those deliveries are gone with it. The rebuilt session
    answers every id the dispatcher still waits for, whatever message brought it up."""
    from shared.messages import TrialEnded, TrialSuggested

    tuner, bus = _restarted_tuner("e3", requested=[1, 2], concurrency=2)
    # The first message after the restart is the (already recorded) end of trial 0, not a request.
    await tuner.on_ended(TrialEnded(experiment_id="e3", trial_id="t0", parameter_id=0,
                                    status=TrialStatus.SUCCEEDED, final_value=0.5))
    answers = {m.parameter_id: m.parameters for m in bus.published if isinstance(m, TrialSuggested)}
    assert sorted(answers) == [1, 2]
    assert all(p is not None and p != {"x": 1} for p in answers.values())
