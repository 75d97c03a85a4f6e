"""NNI's Hyperband advisor: brackets, budgets, promotion, exec modes, and rebuilding after a restart."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from services.tuner.algorithms import TunerConfigError, WaitForResults, create_tuner
from shared.search_space import parse_parameters

SPACE: dict[str, Any] = {
    "x": {"_type": "uniform", "_value": [0.0, 1.0]},
    "opt": {"_type": "choice", "_value": [{"_name": "sgd", "m": {"_type": "uniform", "_value": [0, 1]}},
                                          {"_name": "adam"}]},
}


def advisor(seed: int = 1, **args: Any) -> Any:
    return create_tuner("Hyperband", {"optimize_mode": "maximize", "seed": seed, **args}, SPACE)


def score(p: dict[str, Any]) -> float:
    return p["x"] * p["TRIAL_BUDGET"]


def run(tuner: Any, trials: int, in_flight: int = 1) -> list[dict[str, Any]]:
    """Hand out ``trials`` runs with up to ``in_flight`` running; the oldest reports first."""
    handed: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, Any]]] = []
    pid = 0
    while pid < trials or pending:
        try:
            while pid < trials and len(pending) < in_flight:
                params = tuner.generate_parameters(pid)
                handed.append(params)
                pending.append((pid, params))
                pid += 1
        except WaitForResults:
            assert pending, "an advisor waits only for running trials"
        done, params = pending.pop(0)
        tuner.receive_trial_result(done, params, score(params))
    return handed


def rounds(tuner: Any) -> list[list[tuple[int, int]]]:
    """Each bracket's rounds as (configurations, budget)."""
    return [[(len(r), r[0].parameters["TRIAL_BUDGET"]) for r in b.rungs] for b in tuner.brackets]


def test_brackets_follow_the_hyperband_paper_for_r81_eta3() -> None:
    # NNI's code (and Li et al.'s table): n = ceil(5 * 3**s / (s + 1)), r = 81 / 3**s. (The table
    # in NNI's docstring shows 27, 9, 6 first rounds for s = 3, 2, 1; its code makes 34, 15, 8.)
    tuner = advisor(R=81, eta=3, exec_mode="serial")
    run(tuner, 121 + 49 + 21 + 10 + 5)
    assert rounds(tuner) == [
        [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
        [(34, 3), (11, 9), (3, 27), (1, 81)],
        [(15, 9), (5, 27), (1, 81)],
        [(8, 27), (2, 81)],
        [(5, 81)],
    ]


def test_the_best_of_a_round_are_promoted_with_the_larger_budget() -> None:
    tuner = advisor(R=9, eta=3, exec_mode="serial")
    first = run(tuner, 9)
    promoted = [tuner.generate_parameters(9 + i) for i in range(3)]
    best = sorted(first, key=score, reverse=True)[:3]
    assert [p["x"] for p in promoted] == [p["x"] for p in best]
    assert {p["TRIAL_BUDGET"] for p in promoted} == {3}
    assert all({k: v for k, v in p.items() if k != "TRIAL_BUDGET"} in
               [{k: v for k, v in q.items() if k != "TRIAL_BUDGET"} for q in first] for p in promoted)


def test_minimize_promotes_the_lowest() -> None:
    tuner = create_tuner("Hyperband", {"optimize_mode": "minimize", "R": 9, "eta": 3, "seed": 2}, SPACE)
    first = run(tuner, 9)
    promoted = [tuner.generate_parameters(9 + i)["x"] for i in range(3)]
    assert promoted == [p["x"] for p in sorted(first, key=score)[:3]]


def test_serial_waits_for_a_round_and_parallelism_starts_the_next_bracket() -> None:
    serial = advisor(R=9, eta=3, exec_mode="serial")
    [serial.generate_parameters(i) for i in range(9)]
    with pytest.raises(WaitForResults):
        serial.generate_parameters(9)
    parallel = advisor(R=9, eta=3)
    [parallel.generate_parameters(i) for i in range(9)]
    assert parallel.generate_parameters(9)["TRIAL_BUDGET"] == 3  # bracket s=1 starts at budget 3
    assert len(parallel.brackets) == 2


def test_failed_trials_count_as_done_but_are_not_promoted() -> None:
    tuner = advisor(R=9, eta=3, exec_mode="serial")
    params = [tuner.generate_parameters(i) for i in range(9)]
    for i in range(8):
        tuner.trial_end(i, False)  # no result at all
    tuner.receive_trial_result(8, params[8], 0.1)
    assert tuner.generate_parameters(9)["x"] == params[8]["x"]  # the one with a result goes on, alone
    assert tuner.brackets[0].size(1, 3) == (3, 3)


def test_a_round_without_any_result_ends_its_bracket() -> None:
    tuner = advisor(R=9, eta=3, exec_mode="serial")
    for i in range(9):
        tuner.generate_parameters(i)
        tuner.trial_end(i, False)
    assert tuner.generate_parameters(9)["TRIAL_BUDGET"] == 3 and len(tuner.brackets) == 2


def test_same_seed_same_runs_and_no_duplicates_in_flight() -> None:
    a, b = run(advisor(seed=4), 40, in_flight=4), run(advisor(seed=4), 40, in_flight=4)
    assert a == b
    assert a != run(advisor(seed=5), 40, in_flight=4)
    tuner = advisor(seed=4)
    in_flight = [json.dumps(tuner.generate_parameters(i), sort_keys=True) for i in range(30)]
    assert len(set(in_flight)) == 30


@pytest.mark.parametrize("exec_mode", ["serial", "parallelism"])
def test_rebuilt_from_recorded_trials_continues_like_the_uninterrupted_one(exec_mode: str) -> None:
    uninterrupted = advisor(R=9, eta=3, exec_mode=exec_mode)
    records: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, Any]]] = []
    pid = 0
    while pid < 12:
        try:
            pending.append((pid, uninterrupted.generate_parameters(pid)))
            pid += 1
        except WaitForResults:
            pass
        if len(pending) == 3 or (pid < 12 and not uninterrupted._queue):  # the oldest reports
            done, done_params = pending.pop(0)
            uninterrupted.receive_trial_result(done, done_params, score(done_params))
    reported = {pid for pid in range(12)} - {pid for pid, _ in pending}
    for pid in range(12):
        params = uninterrupted._by_id[pid].parameters
        records.append({"parameter": params, "value": score(params) if pid in reported else None,
                        "ended": pid in reported})

    rebuilt = advisor(R=9, eta=3, exec_mode=exec_mode)
    assert rebuilt.import_data(records) == 12
    for pid, params in pending:  # results of trials that ran across the restart are matched by parameters
        uninterrupted.receive_trial_result(pid, params, score(params))
        rebuilt.receive_trial_result(pid, params, score(params))
    assert [rebuilt.generate_parameters(100 + i) for i in range(6)] == \
        [uninterrupted.generate_parameters(100 + i) for i in range(6)]
    assert rounds(rebuilt) == rounds(uninterrupted)


def test_records_from_another_search_space_are_left_out() -> None:
    tuner = advisor(R=9, eta=3)
    assert tuner.import_data([{"parameter": {"y": 1, "TRIAL_BUDGET": 1}, "value": 1.0, "ended": True}]) == 0
    assert tuner.brackets == [] and tuner.generate_parameters(0)["TRIAL_BUDGET"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "classArgs.optimize_mode is required"),
        ({"optimize_mode": "maximize", "eta": 1}, "classArgs.eta must be >= 2"),
        ({"optimize_mode": "maximize", "R": 0}, "classArgs.R must be >= 1"),
        ({"optimize_mode": "maximize", "R": 10**6}, "classArgs.R must be <= 100000"),
        ({"optimize_mode": "maximize", "exec_mode": "async"}, "classArgs.exec_mode must be one of"),
        ({"optimize_mode": "maximize", "min_budget": 1}, "classArgs.min_budget is not a known argument"),
    ],
)
def test_class_args_are_checked(args: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match="tuner 'Hyperband'") as caught:
        create_tuner("Hyperband", args, SPACE)
    assert message in str(caught.value)


def test_the_budget_key_may_not_be_a_parameter() -> None:
    with pytest.raises(TunerConfigError, match="may not have a parameter named TRIAL_BUDGET"):
        create_tuner("Hyperband", {"optimize_mode": "maximize"},
                     {"TRIAL_BUDGET": {"_type": "randint", "_value": [1, 5]}})


# ---------------------------------------------------------------- in the tuner service


async def test_the_service_holds_requests_and_answers_them_when_a_round_completes() -> None:
    from datetime import UTC, datetime

    from services.tuner.service import TunerService
    from shared.layout import Layout
    from shared.messages import SuggestRequest, TrialEnded, TrialStatus, TrialSuggested
    from shared.state import ExperimentState
    from tests.integration.fakes import RecordingBus
    from tests.unit.test_tuner_replay import _Store

    config = {"searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}}, "trialConcurrency": 3,
              "tuner": {"name": "Hyperband",
                        "classArgs": {"optimize_mode": "maximize", "R": 3, "eta": 3, "exec_mode": "serial"}}}
    layout = Layout("e1")
    store = _Store({layout.experiment_doc: {"config": config},
                    layout.state_doc: ExperimentState(experiment_id="e1", started_at=datetime.now(UTC))
                    .model_dump(mode="json")})
    bus = RecordingBus()
    service = TunerService(bus, store)  # type: ignore[arg-type]
    await service.on_suggest(SuggestRequest(experiment_id="e1", parameter_ids=[0, 1, 2, 3]))
    first = [m for m in bus.published if isinstance(m, TrialSuggested)]
    assert [m.parameter_id for m in first] == [0, 1, 2]  # bracket s=1: 3 runs at budget 1; id 3 waits
    assert all(m.parameters is not None and m.parameters["TRIAL_BUDGET"] == 1 for m in first)
    values = {0: 0.2, 1: None, 2: 0.9}  # id 1 fails with only an intermediate result (0.95)
    for m in first:
        status = TrialStatus.FAILED if values[m.parameter_id] is None else TrialStatus.SUCCEEDED
        await service.on_ended(TrialEnded(experiment_id="e1", trial_id=f"t{m.parameter_id}",
                                          parameter_id=m.parameter_id, attempt=1, status=status,
                                          final_value=values[m.parameter_id], last_intermediate=0.95,
                                          metric_count=1))
    [answer] = [m for m in bus.published if isinstance(m, TrialSuggested)][3:]
    assert answer.parameter_id == 3 and answer.parameters is not None
    assert answer.parameters == {**first[1].parameters, "TRIAL_BUDGET": 3}  # promoted on its intermediate


# ---------------------------------------------------------------- BOHB


def bohb(seed: int = 1, **args: Any) -> Any:
    class_args = {"optimize_mode": "maximize", "min_budget": 1, "max_budget": 9, "eta": 3, "seed": seed,
                  **args}
    return create_tuner("BOHB", class_args, {"x": {"_type": "uniform", "_value": [0.0, 1.0]},
                                             "y": {"_type": "uniform", "_value": [0.0, 1.0]}})


def peak(p: dict[str, Any]) -> float:
    return -((p["x"] - 0.8) ** 2 + (p["y"] - 0.2) ** 2) * (1 + 1 / p["TRIAL_BUDGET"])


def run_bohb(tuner: Any, trials: int) -> list[dict[str, Any]]:
    handed = []
    for pid in range(trials):
        params = tuner.generate_parameters(pid)
        handed.append(params)
        tuner.receive_trial_result(pid, params, peak(params))
    return handed


def test_bohb_brackets_are_hyperbands_for_its_budgets_one_at_a_time() -> None:
    tuner = bohb()
    run_bohb(tuner, 9 + 3 + 1 + 5 + 1 + 3)
    assert rounds(tuner) == [[(9, 1), (3, 3), (1, 9)], [(5, 3), (1, 9)], [(3, 9)]]
    serial = bohb()
    [serial.generate_parameters(i) for i in range(9)]
    with pytest.raises(WaitForResults):
        serial.generate_parameters(9)


def test_bohb_first_rounds_follow_the_model_once_it_has_data() -> None:
    tuner = bohb(random_fraction=0.0, min_points_in_model=3)
    handed = run_bohb(tuner, 9 * 6)
    late = [p for p in handed[30:] if p["TRIAL_BUDGET"] == 1 or p is handed[30]]
    random_first = handed[:9]

    def distance(p: dict[str, Any]) -> float:
        return float(((p["x"] - 0.8) ** 2 + (p["y"] - 0.2) ** 2) ** 0.5)

    model_first = [p for b in tuner.brackets[3:] for p in (j.parameters for j in b.rungs[0])]
    assert model_first and late
    assert np.median([distance(p) for p in model_first]) < np.median([distance(p) for p in random_first])


def test_bohb_same_seed_same_runs_and_rebuild_continues_without_repeats() -> None:
    assert run_bohb(bohb(seed=3), 30) == run_bohb(bohb(seed=3), 30)
    uninterrupted = bohb(seed=3, random_fraction=0.0)
    handed = run_bohb(uninterrupted, 25)
    records = [{"parameter": p, "value": peak(p), "ended": True} for p in handed]
    rebuilt = bohb(seed=3, random_fraction=0.0)
    assert rebuilt.import_data(records) == 25
    assert rounds(rebuilt) == rounds(uninterrupted)
    more = [rebuilt.generate_parameters(100 + i) for i in range(6)]  # the rest of the open round
    assert more == [uninterrupted.generate_parameters(100 + i) for i in range(6)]
    seen = {json.dumps(p, sort_keys=True) for p in handed}
    assert not any(json.dumps(p, sort_keys=True) in seen for p in more)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"optimize_mode": "max"}, "classArgs.optimize_mode must be"),
        ({"max_budget": 1}, "classArgs.max_budget (1) must be larger than min_budget (1)"),
        ({"top_n_percent": 100}, "classArgs.top_n_percent must be <= 99"),
        ({"random_fraction": 1.5}, "classArgs.random_fraction must be between 0 and 1"),
        ({"config_space": "space.pcs"}, "classArgs.config_space (a ConfigSpace file) is not supported"),
        ({"R": 9}, "classArgs.R is not a known argument"),
    ],
)
def test_bohb_class_args_are_checked(args: dict[str, Any], message: str) -> None:
    with pytest.raises(TunerConfigError, match="tuner 'BOHB'") as caught:
        bohb(**args)
    assert message in str(caught.value)


def test_bohb_refuses_a_nested_choice() -> None:
    with pytest.raises(TunerConfigError, match="'opt' is a nested choice; BOHB takes flat parameters only"):
        create_tuner("BOHB", {"optimize_mode": "maximize"}, SPACE)


def test_bohb_models_every_budget_by_rank_within_it_weighted_by_the_budget() -> None:
    """Short runs are biased (here: far worse values, and a misleading optimum), but their ranks
    among themselves count early; a longer run counts as many short ones as its budget is
    longer. So one full-budget result outweighs a few short ones, and short runs make a model
    possible before the full budget has enough results for one. (NNI's and BOHB's paper's rule,
    the largest budget with enough results alone, would model budget 1 here: optimum A.)"""
    tuner = bohb(min_points_in_model=3)

    def encode(params: dict[str, float]) -> np.ndarray:
        return tuner.encoding.encode(parse_parameters(tuner.specs, params))

    near_a, near_b = (0.1, 0.9), (0.8, 0.2)  # short runs say A; the full budget says B
    rng = np.random.default_rng(0)
    for i in range(27):  # budget 1: the three best (far worse than any full run) near A
        x, y = near_a if i < 3 else rng.random(2)
        tuner._results[1].append((encode({"x": x, "y": y}), 100.0 + i))
    for i in range(6):  # budget 9: the best near B, the rest spread out
        x, y = near_b if i == 0 else rng.random(2)
        tuner._results[9].append((encode({"x": x, "y": y}), float(i)))
    model = tuner._model()
    assert model is not None
    good, bad, _ = model
    points = np.array([encode(dict(zip("xy", p, strict=True))) for p in (near_b, near_a)])
    score = good.log_pdf(points) - bad.log_pdf(points)
    assert score[0] > score[1]  # the full-budget optimum, weighted 9 to 1, leads
    short_runs = tuner._results.pop(1)
    assert tuner._model() is None  # the full budget alone has too few results for a model yet
    tuner._results[1] = short_runs[:10]  # and the short runs' ranks count, whatever their values
    assert tuner._model() is not None
