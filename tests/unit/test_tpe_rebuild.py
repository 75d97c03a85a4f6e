"""A TPE rebuilt from history (after a tuner restart) suggests what an uninterrupted one would."""

from __future__ import annotations

from services.tuner.algorithms import create_tuner

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "k": {"_type": "choice", "_value": ["a", "b", "c"]}}


def _value(p: dict[str, object]) -> float:
    return -abs(float(p["x"]) - 0.3) + (0.1 if p["k"] == "b" else 0.0)  # type: ignore[arg-type]


def test_rebuilt_tpe_continues_the_same_start_up_sequence() -> None:
    uninterrupted = create_tuner("TPE", {"optimize_mode": "maximize", "seed": 4}, SPACE)
    history = []
    for pid in range(2):
        params = uninterrupted.generate_parameters(pid)
        uninterrupted.receive_trial_result(pid, params, _value(params))
        history.append({"parameter": params, "value": _value(params)})
    expected = [uninterrupted.generate_parameters(pid) for pid in range(2, 6)]

    rebuilt = create_tuner("TPE", {"optimize_mode": "maximize", "seed": 4}, SPACE)
    rebuilt.import_data(history)
    assert [rebuilt.generate_parameters(pid) for pid in range(2, 6)] == expected
