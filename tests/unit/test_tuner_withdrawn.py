"""Suggestions the dispatcher withdraws (``tunebus update`` lowered ``maxTrialNumber``) through the
tuner service: a held request is not answered, and an answered one ends as a trial that never
ran, so that a serial advisor's round completes and the experiment goes on (before, the round
waited for results that could never come, and the experiment ended in ERROR)."""

from __future__ import annotations

from datetime import UTC, datetime

from services.tuner.service import TunerService
from shared.layout import Layout
from shared.messages import SuggestionsWithdrawn, SuggestRequest, TrialEnded, TrialStatus, TrialSuggested
from shared.state import ExperimentState
from tests.integration.fakes import RecordingBus
from tests.unit.test_tuner_replay import _Store

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}}
CONFIG = {"searchSpace": SPACE, "trialConcurrency": 10,
          "tuner": {"name": "BOHB", "classArgs": {"optimize_mode": "maximize", "min_budget": 1,
                                                    "max_budget": 9, "eta": 3, "seed": 1}}}


def _service(bus: RecordingBus) -> TunerService:
    empty = ExperimentState(experiment_id="e1", started_at=datetime.now(UTC))
    layout = Layout("e1")
    store = _Store({layout.experiment_doc: {"config": CONFIG},
                    layout.state_doc: empty.model_dump(mode="json")})
    return TunerService(bus, store)  # type: ignore[arg-type]


def _answered(bus: RecordingBus) -> dict[int, dict]:
    return {m.parameter_id: m.parameters for m in bus.published if isinstance(m, TrialSuggested)}


async def _first_round_with_three_withdrawn(service: TunerService, bus: RecordingBus, *,
                                            withdraw: bool) -> None:
    await service.on_suggest(SuggestRequest(experiment_id="e1", parameter_ids=list(range(10))))
    answered = _answered(bus)
    assert sorted(answered) == list(range(9))  # the first round (9 at budget 1); id 9 is held
    if withdraw:
        await service.on_withdrawn(SuggestionsWithdrawn(experiment_id="e1", parameter_ids=[7, 8, 9]))
    for pid in range(7):
        params = answered[pid]
        assert params is not None
        await service.on_ended(TrialEnded(experiment_id="e1", trial_id=f"t{pid}", parameter_id=pid,
                                          status=TrialStatus.SUCCEEDED, final_value=params["x"]))


async def test_withdrawn_suggestions_let_a_serial_advisors_round_complete() -> None:
    bus = RecordingBus()
    service = _service(bus)
    await _first_round_with_three_withdrawn(service, bus, withdraw=True)
    assert 9 not in _answered(bus)  # withdrawn while held: never answered
    await service.on_suggest(SuggestRequest(experiment_id="e1", parameter_ids=[10, 11, 12]))
    promoted = _answered(bus)
    assert [promoted[pid]["TRIAL_BUDGET"] for pid in (10, 11, 12)] == [3, 3, 3]  # the next round
    best_three = sorted((promoted[pid]["x"] for pid in range(7)), reverse=True)[:3]
    assert sorted(promoted[pid]["x"] for pid in (10, 11, 12)) == sorted(best_three)
    await service.on_withdrawn(SuggestionsWithdrawn(experiment_id="e1", parameter_ids=[7, 8]))  # again: no-op


async def test_without_the_withdrawal_the_round_waits_for_ever() -> None:
    """What the withdrawal prevents: the round counts the two answered ids that never run."""
    bus = RecordingBus()
    service = _service(bus)
    await _first_round_with_three_withdrawn(service, bus, withdraw=False)
    await service.on_suggest(SuggestRequest(experiment_id="e1", parameter_ids=[10]))
    assert 10 not in _answered(bus)
