"""Tuner quality: mean regret (best found minus the known optimum) after N trials, over seeds.

Run from the project root::

    .venv/bin/python benchmarks/tuner_quality.py                       # TPE and Random, seq and batch 8
    .venv/bin/python benchmarks/tuner_quality.py --tuners TPE,Anneal --funcs branin --batch 1

Every tuner is driven through NNI's interface exactly like the shared side-by-side benchmark
(``../shared/bench/tuners.py``): ``batch`` trials in flight, the oldest reported first. When that
file exists its objectives are used, so the numbers are comparable with the peers it runs
(NNI, Optuna, hyperopt); otherwise this file's own objectives are. Peer tuners named there
(``optuna_tpe``, ``nni_tpe``, ...) can be given in ``--tuners`` in an environment that has them.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.tuner.algorithms import create_tuner  # noqa: E402  (needs the root on sys.path)

SHARED_BENCH = ROOT.parent / "shared" / "bench" / "tuners.py"

Objective = Callable[[dict[str, Any]], float]
Problem = tuple[dict[str, Any], Objective, float]  # search space, objective (minimised), optimum


# ---------------------------------------------------------------- own objectives (fallback)


def _branin(p: dict[str, Any]) -> float:
    """Branin-Hoo on [-5, 10] x [0, 15]: three global minima of 0.397887."""
    x, y = p["x"], p["y"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


_HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_HARTMANN_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_HARTMANN_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def _hartmann6(p: dict[str, Any]) -> float:
    """The six-dimensional Hartmann function on [0, 1]^6 (minimum -3.32237)."""
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-_HARTMANN_ALPHA @ np.exp(-np.sum(_HARTMANN_A * (x - _HARTMANN_P) ** 2, axis=1)))


def _mixed(p: dict[str, Any]) -> float:
    """A made-up training-loss surface over a categorical, a log-scale, an integer and a q-value."""
    penalty = {"adam": 0.0, "sgd": 0.15, "rmsprop": 0.3}[p["optimizer"]]
    lr = (math.log10(p["lr"]) + 2.5) ** 2
    layers = 0.05 * (p["layers"] - 4) ** 2
    batch = ((p["batch"] - 96) / 160) ** 2
    return penalty + lr + layers + batch


OWN_PROBLEMS: dict[str, Problem] = {
    "branin": (
        {"x": {"_type": "uniform", "_value": [-5, 10]}, "y": {"_type": "uniform", "_value": [0, 15]}},
        _branin,
        0.397887,
    ),
    "hartmann6": ({f"x{i}": {"_type": "uniform", "_value": [0, 1]} for i in range(6)}, _hartmann6, -3.32237),
    "mixed": (
        {
            "optimizer": {"_type": "choice", "_value": ["sgd", "adam", "rmsprop"]},
            "lr": {"_type": "loguniform", "_value": [1e-5, 1.0]},
            "layers": {"_type": "randint", "_value": [1, 9]},
            "batch": {"_type": "quniform", "_value": [16, 256, 16]},
        },
        _mixed,
        0.0,
    ),
}


def shared_bench() -> ModuleType | None:
    """The shared side-by-side benchmark module, if this checkout sits next to it."""
    if not SHARED_BENCH.exists():
        return None
    spec = importlib.util.spec_from_file_location("shared_tuner_bench", SHARED_BENCH)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def problems(bench: ModuleType | None) -> dict[str, Problem]:
    """The shared benchmark's objectives when available, else this file's own."""
    return dict(bench.FUNCS) if bench is not None else OWN_PROBLEMS


# ---------------------------------------------------------------- driving tuners


def make_tuner(name: str, space: dict[str, Any], seed: int, bench: ModuleType | None) -> Any:
    """A project tuner by NNI name (TPE, Random, ...) or a peer adapter from the shared benchmark."""
    if bench is not None and name in bench.TUNERS:
        return bench.TUNERS[name](space, seed)
    args: dict[str, Any] = {"seed": seed}
    if name in ("TPE", "Anneal", "Evolution"):
        args["optimize_mode"] = "minimize"
    return create_tuner(name, args, space)


def best_found(tuner: Any, objective: Objective, trials: int, batch: int) -> float:
    """Run ``trials`` trials with ``batch`` in flight (oldest reported first); the best value seen."""
    best, next_id = math.inf, 0
    pending: list[tuple[int, dict[str, Any]]] = []
    while next_id < trials or pending:
        while next_id < trials and len(pending) < batch:
            pending.append((next_id, tuner.generate_parameters(next_id)))
            next_id += 1
        parameter_id, params = pending.pop(0)
        value = objective(params)
        best = min(best, value)
        tuner.receive_trial_result(parameter_id, params, value)
    return best


def main() -> None:
    """Print mean and median regret per objective, tuner and batch size."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tuners", default="TPE,Random")
    parser.add_argument("--funcs", default=None, help="default: every objective")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--batch", default="1,8", help="comma-separated numbers of trials in flight")
    args = parser.parse_args()

    bench = shared_bench()
    table = problems(bench)
    funcs = args.funcs.split(",") if args.funcs else list(table)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(
        f"objectives from {'the shared benchmark' if bench else 'this file'};",
        f"seeds {seeds.start}..{seeds.stop - 1}",
    )
    print(f"{'function':12s} {'tuner':14s} {'batch':>5s} {'mean regret':>12s} {'median':>9s} {'seconds':>8s}")
    for func in funcs:
        space, objective, optimum = table[func]
        for name in args.tuners.split(","):
            for batch in (int(b) for b in args.batch.split(",")):
                start = time.perf_counter()
                regrets = [
                    best_found(make_tuner(name, space, s, bench), objective, args.trials, batch) - optimum
                    for s in seeds
                ]
                print(
                    f"{func:12s} {name:14s} {batch:5d} {statistics.mean(regrets):12.4f} "
                    f"{statistics.median(regrets):9.4f} {time.perf_counter() - start:8.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
