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

from services.tuner.algorithms import TunerConfigError, create_tuner  # noqa: E402  (needs the root on sys.path)

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
    if name in PEERS:
        return PEERS[name](space, seed)
    args: dict[str, Any] = {"seed": seed}
    if name in ("TPE", "Anneal", "Evolution", "GP", "Metis", "DNGO"):
        args["optimize_mode"] = "minimize"
    return create_tuner(name, args, space)


class OptunaGP:
    """Optuna's GPSampler (needs optuna and torch) through NNI's interface, like the shared adapters."""

    def __init__(self, space: dict[str, Any], seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=seed))
        self.trials: dict[int, Any] = {}

    def _distribution(self, spec: dict[str, Any]) -> Any:
        import optuna.distributions as d

        kind, v = spec["_type"], spec["_value"]
        table = {
            "choice": lambda: d.CategoricalDistribution(v),
            "uniform": lambda: d.FloatDistribution(v[0], v[1]),
            "loguniform": lambda: d.FloatDistribution(v[0], v[1], log=True),
            "quniform": lambda: d.FloatDistribution(v[0], v[1], step=v[2]),
            "randint": lambda: d.IntDistribution(v[0], v[1] - 1),
        }
        return table[kind]()

    def generate_parameters(self, parameter_id: int) -> dict[str, Any]:
        trial = self.study.ask({k: self._distribution(s) for k, s in self.space.items()})
        self.trials[parameter_id] = trial
        return dict(trial.params)

    def receive_trial_result(self, parameter_id: int, params: dict[str, Any], value: float) -> None:
        self.study.tell(self.trials.pop(parameter_id), value)


PEERS: dict[str, Callable[[dict[str, Any], int], Any]] = {"optuna_gp": OptunaGP}


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


# ---------------------------------------------------------------- multi-fidelity (Hyperband, BOHB)

MAX_BUDGET = 27  # R: a full training run


def _partial_training(p: dict[str, Any], budget: int) -> float:
    """Hartmann-6 seen after ``budget`` of 27 epochs: the final loss plus a bias that shrinks with
    the budget and depends on the configuration, so short runs rank configurations only roughly."""
    x = np.array([p[f"x{i}"] for i in range(6)])
    bias = (1.0 - budget / MAX_BUDGET) * 0.6 * (1.0 + math.sin(5.0 * float(x.sum())))
    return _hartmann6(p) + bias


def multi_fidelity_regret(name: str, seed: int, total_budget: int) -> float:
    """Regret of the best configuration run at the full budget, once ``total_budget`` epochs are spent.

    Hyperband and BOHB hand out budgets; any other tuner runs every trial at the full budget."""
    space = {f"x{i}": {"_type": "uniform", "_value": [0, 1]} for i in range(6)}
    if name == "Hyperband":
        args = {"optimize_mode": "minimize", "R": MAX_BUDGET, "eta": 3, "seed": seed}
        tuner = create_tuner(name, args, space)
    elif name == "BOHB":
        tuner = create_tuner(name, {"optimize_mode": "minimize", "min_budget": 1, "max_budget": MAX_BUDGET,
                                    "eta": 3, "seed": seed}, space)
    else:
        tuner = make_tuner(name, space, seed, None)
    spent, best, parameter_id = 0, math.inf, 0
    while spent < total_budget:
        params = tuner.generate_parameters(parameter_id)
        budget = int(params.get("TRIAL_BUDGET", MAX_BUDGET))
        value = _partial_training(params, budget)
        spent += budget
        if budget == MAX_BUDGET:
            best = min(best, _hartmann6(params))
        tuner.receive_trial_result(parameter_id, params, value)
        parameter_id += 1
    return best - (-3.32237)


def multi_fidelity(tuners: list[str], seeds: range, budgets: list[int]) -> None:
    print(f"multi-fidelity Hartmann-6, R={MAX_BUDGET}: mean regret of the best full-budget run "
          f"(seeds {seeds.start}..{seeds.stop - 1}), sequential")
    print(f"{'tuner':10s} " + " ".join(f"{b // MAX_BUDGET:>4d}R" for b in budgets))
    for name in tuners:
        cells = [statistics.mean(multi_fidelity_regret(name, s, b) for s in seeds) for b in budgets]
        print(f"{name:10s} " + " ".join(f"{c:5.3f}" for c in cells), flush=True)


# ---------------------------------------------------------------- population based training (PBT)

PBT_DIM = 10
PBT_CURVATURES = np.logspace(0, 2, PBT_DIM)  # an ill-conditioned bowl: big steps diverge, small ones crawl
PBT_ITERATIONS = 25  # SGD iterations per step (a trial)


def _train_step(state: tuple[np.ndarray, np.ndarray] | None, p: dict[str, Any],
                rng: np.random.Generator) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """One step of noisy SGD with momentum on the bowl, from a checkpoint (weights, velocity) or
    from scratch; returns the new checkpoint and the loss. Early on large steps pay, late the noise
    they carry costs: the best learning rate changes during training, which a schedule can follow."""
    w, v = state if state is not None else (np.full(PBT_DIM, 3.0), np.zeros(PBT_DIM))
    w, v = w.copy(), v.copy()
    for _ in range(PBT_ITERATIONS):
        gradient = PBT_CURVATURES * (w - 1.0) + rng.normal(0.0, 2.0, PBT_DIM)
        v = p["momentum"] * v - p["lr"] * gradient
        w = np.clip(w + v, -1e3, 1e3)
    return (w, v), float(np.sum(PBT_CURVATURES * (w - 1.0) ** 2))


def pbt_final_loss(name: str, seed: int, population: int, steps: int) -> float:
    """The best final loss after ``population * steps`` trial-steps of compute.

    PBT trains a population of ``population`` for ``steps`` steps, handing checkpoints on (kept
    here in a dict by their save folder); any other tuner spends the same compute on
    ``population`` full runs of ``steps`` steps, each with fixed hyperparameters."""
    space = {"lr": {"_type": "loguniform", "_value": [1e-4, 0.05]},
             "momentum": {"_type": "uniform", "_value": [0.0, 0.99]}}
    rng = np.random.default_rng(seed)
    if name != "PBT":
        tuner = make_tuner(name, space, seed, None)
        best = math.inf
        for parameter_id in range(population):
            params = tuner.generate_parameters(parameter_id)
            state = None
            for _ in range(steps):
                state, loss = _train_step(state, params, rng)
            best = min(best, loss)
            tuner.receive_trial_result(parameter_id, params, loss)
        return best
    tuner = create_tuner("PBT", {"optimize_mode": "minimize", "population_size": population, "seed": seed},
                         space)
    checkpoints: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    losses: list[float] = []
    for step in range(steps):
        handed = [(step * population + i, tuner.generate_parameters(step * population + i))
                  for i in range(population)]
        losses = []
        for parameter_id, params in handed:
            state, loss = _train_step(checkpoints.get(params["load_checkpoint_dir"]), params, rng)
            checkpoints[params["save_checkpoint_dir"]] = state
            losses.append(loss)
            tuner.receive_trial_result(parameter_id, params, loss)
    return min(losses)


def pbt(tuners: list[str], seeds: range, population: int, steps: int) -> None:
    print(f"PBT toy (noisy SGD on a {PBT_DIM}-d ill-conditioned bowl), population {population} x {steps} "
          f"steps: best final loss, seeds {seeds.start}..{seeds.stop - 1}")
    for name in tuners:
        losses = [pbt_final_loss(name, s, population, steps) for s in seeds]
        print(f"{name:10s} mean {statistics.mean(losses):10.4f} median {statistics.median(losses):10.4f}",
              flush=True)


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
    parser.add_argument("--multi-fidelity", action="store_true",
                        help="Hyperband/BOHB vs full-budget tuners on a budgeted Hartmann-6 "
                             "(--tuners Hyperband,BOHB,Random,TPE)")
    parser.add_argument("--pbt", action="store_true",
                        help="PBT vs full runs of other tuners on a toy training problem "
                             "(--tuners PBT,Random,TPE)")
    args = parser.parse_args()
    if args.pbt:
        pbt(args.tuners.split(","), range(args.first_seed, args.first_seed + args.seeds), 10, 20)
        return
    if args.multi_fidelity:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        multi_fidelity(args.tuners.split(","), seeds, [MAX_BUDGET * k for k in (10, 30, 100)])
        return

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
                try:
                    regrets = [
                        best_found(make_tuner(name, space, s, bench), objective, args.trials, batch) - optimum
                        for s in seeds
                    ]
                except TunerConfigError as exc:  # e.g. GP on a space with a choice of strings
                    print(f"{func:12s} {name:14s} {batch:5d}  n/a: {exc}", flush=True)
                    continue
                print(
                    f"{func:12s} {name:14s} {batch:5d} {statistics.mean(regrets):12.4f} "
                    f"{statistics.median(regrets):9.4f} {time.perf_counter() - start:8.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
