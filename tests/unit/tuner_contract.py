"""What the tuner tests share: NNI's driving loop, the rebuild and finite-space checks every
tuner meets, and the Branin problem a model tuner must solve better than random search."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from services.tuner.algorithms import NoMoreTrials, create_tuner

Loss = Callable[[dict[str, Any]], float]

#: Branin's domain, and its global minimum (reached at three points).
BRANIN_SPACE: dict[str, Any] = {"x": {"_type": "uniform", "_value": [-5, 10]},
                                "y": {"_type": "uniform", "_value": [0, 15]}}
BRANIN_MINIMUM = 0.397887

#: Every numeric parameter type the model tuners (GP, DNGO) take, with :func:`numeric_loss` on it.
NUMERIC_TYPES_SPACE: dict[str, Any] = {
    "x": {"_type": "uniform", "_value": [-5.0, 10.0]},
    "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
    "batch": {"_type": "quniform", "_value": [16, 128, 16]},
    "width": {"_type": "qloguniform", "_value": [8, 512, 8]},
    "layers": {"_type": "randint", "_value": [1, 5]},
    "momentum": {"_type": "choice", "_value": [0.9, 0.5, 0.99]},
}

#: A space of 3 x 3 = 9 points: a tuner must suggest each once, then have no more.
FINITE_SPACE: dict[str, Any] = {"a": {"_type": "choice", "_value": [1, 2, 3]},
                                "b": {"_type": "randint", "_value": [0, 3]}}


def key(params: Any) -> str:
    """Parameters as a comparable string (dicts are not hashable)."""
    return json.dumps(params, sort_keys=True)


def drive(tuner: Any, trials: int, loss: Loss, batch: int = 1) -> list[dict[str, Any]]:
    """NNI's loop: keep ``batch`` trials in flight, report the oldest first (as the service does)."""
    suggested: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, Any]]] = []
    next_id = 0
    while next_id < trials or pending:
        while next_id < trials and len(pending) < batch:
            params = tuner.generate_parameters(next_id)
            suggested.append(params)
            pending.append((next_id, params))
            next_id += 1
        parameter_id, params = pending.pop(0)
        tuner.receive_trial_result(parameter_id, params, loss(params))
        tuner.trial_end(parameter_id, True)
    return suggested


def numeric_loss(p: dict[str, Any]) -> float:
    """A loss on :data:`NUMERIC_TYPES_SPACE` that every parameter moves."""
    return ((p["x"] - 2.0) ** 2 + abs(math.log10(p["lr"]) + 2) + 0.01 * p["batch"] + 0.1 * p["layers"]
            + (p["momentum"] - 0.9) ** 2)


def assert_rebuilt_continues(make: Callable[[], Any], loss: Loss, trials: int, *,
                             reverse: bool = False) -> None:
    """A tuner rebuilt from the records of ``trials`` results (in reverse order with ``reverse``)
    makes the next three suggestions the uninterrupted one makes."""
    uninterrupted = make()
    history = []
    for pid in range(trials):
        params = uninterrupted.generate_parameters(pid)
        uninterrupted.receive_trial_result(pid, params, loss(params))
        history.append({"parameter": params, "value": loss(params)})
    expected = [uninterrupted.generate_parameters(pid) for pid in range(trials, trials + 3)]
    rebuilt = make()
    assert rebuilt.import_data(list(reversed(history)) if reverse else history) == trials
    assert [rebuilt.generate_parameters(pid) for pid in range(trials, trials + 3)] == expected


def assert_never_repeats_until_exhausted(tuner: Any) -> None:
    """``tuner`` (on :data:`FINITE_SPACE`) suggests each of its 9 points once, then no more."""
    seen = set()
    for pid in range(9):
        p = tuner.generate_parameters(pid)
        assert key(p) not in seen
        seen.add(key(p))
        tuner.receive_trial_result(pid, p, float(p["a"] * p["b"]))
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(9)


def branin(p: dict[str, float]) -> float:
    """The Branin-Hoo function: three global minima of :data:`BRANIN_MINIMUM`."""
    x, y = p["x"], p["y"]
    bowl = (y - 5.1 / (4 * math.pi**2) * x * x + 5 / math.pi * x - 6) ** 2
    return bowl + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10


def branin_regret(name: str, class_args: dict[str, Any], trials: int) -> float:
    """How far above Branin's minimum the best of ``trials`` sequential suggestions lands."""
    tuner = create_tuner(name, class_args, BRANIN_SPACE)
    values = []
    for pid in range(trials):
        p = tuner.generate_parameters(pid)
        values.append(branin(p))
        tuner.receive_trial_result(pid, p, values[-1])
    return min(values) - BRANIN_MINIMUM
