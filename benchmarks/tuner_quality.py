"""Tuner quality: mean regret (best found minus the known optimum) after N trials, over seeds.

Run from the project root::

    .venv/bin/python benchmarks/tuner_quality.py                       # TPE and Random, seq and batch 8
    .venv/bin/python benchmarks/tuner_quality.py --tuners TPE,Anneal --funcs branin --batch 1

Every tuner is driven through NNI's interface exactly like the shared side-by-side benchmark
(``../shared/bench/tuners.py``): ``batch`` trials in flight, the oldest reported first. When that
file exists its objectives are used, so the numbers are comparable with the peers it runs
(NNI, Optuna, hyperopt); otherwise this file's own objectives are. Peer tuners named there
(``optuna_tpe``, ``nni_tpe``, ...) can be given in ``--tuners`` in an environment that has them.

Peers defined here, imported only when named (so this file runs without them): ``optuna_gp``
(Optuna's GPSampler), ``nni_gp``, ``nni_metis`` and ``nni_dngo`` (NNI 3.0's GPTuner, MetisTuner
and DNGOTuner with their defaults) and, for ``--multi-fidelity``, ``nni_bohb`` and
``nni_hyperband`` (NNI 3.0's advisors, driven through NNI's dispatcher messages) and, for
``--pbt``, ``nni_pbt`` (NNI 3.0's PBTTuner).
NNI's tuners take no seed: Python's and numpy's global RNGs are seeded before each is built, and
the private RandomStates NNI makes are reseeded::

    PYTHONPATH=. /tmp/nni-venv/bin/python benchmarks/tuner_quality.py --tuners GP,nni_gp --funcs hartmann6
    PYTHONPATH=. /tmp/nni-venv/bin/python benchmarks/tuner_quality.py --multi-fidelity --tuners BOHB,nni_bohb

``--start-from GP:10`` pairs the comparison: each tuner first learns the 10 trials tunebus's GP
draws for its cold start with that seed, so two GPs are compared from the same first trials.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
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


# ---------------------------------------------------------------- multimodal, 10-20 dimensions


def _vector(p: dict[str, Any], dims: int) -> np.ndarray:
    return np.array([p[f"x{i}"] for i in range(dims)], dtype=float)


#: Where the shifted functions have their minimum (not the box's centre, which some samplers favour).
_SHIFT = 1.7 * np.sin(np.arange(1, 21) * 1.3)


def _ackley10(p: dict[str, Any]) -> float:
    """Ackley in 10 dimensions on [-5, 5]^10, its minimum 0 moved to ``_SHIFT``: a wide funnel
    covered in many shallow local minima."""
    z = _vector(p, 10) - _SHIFT[:10]
    return float(-20 * np.exp(-0.2 * np.sqrt(np.mean(z**2))) - np.exp(np.mean(np.cos(2 * np.pi * z)))
                 + 20 + math.e)


def _rastrigin10(p: dict[str, Any]) -> float:
    """Rastrigin in 10 dimensions on [-5.12, 5.12]^10, minimum 0 moved to ``_SHIFT``: a regular
    lattice of about 10^10 local minima."""
    z = _vector(p, 10) - _SHIFT[:10]
    return float(10 * len(z) + np.sum(z**2 - 10 * np.cos(2 * np.pi * z)))


def _levy20(p: dict[str, Any]) -> float:
    """Levy in 20 dimensions on [-10, 10]^20 (minimum 0 at x = 1): ridges of local minima."""
    w = 1 + (_vector(p, 20) - 1) / 4
    middle = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(np.pi * w[:-1] + 1) ** 2))
    return float(np.sin(np.pi * w[0]) ** 2 + middle + (w[-1] - 1) ** 2 * (1 + np.sin(2 * np.pi * w[-1]) ** 2))


def _styblinski_tang12(p: dict[str, Any]) -> float:
    """Styblinski-Tang in 12 dimensions on [-5, 5]^12: 2^12 local minima, the global one in a
    corner region (each x_i = -2.9035, -39.16617 a dimension)."""
    x = _vector(p, 12)
    return float(0.5 * np.sum(x**4 - 16 * x**2 + 5 * x))


def _box(dims: int, low: float, high: float) -> dict[str, Any]:
    return {f"x{i}": {"_type": "uniform", "_value": [low, high]} for i in range(dims)}


#: Added to whichever objectives are used (issue 14: multimodal and 10-20 dimensional).
HARD_PROBLEMS: dict[str, Problem] = {
    "ackley10": (_box(10, -5, 5), _ackley10, 0.0),
    "rastrigin10": (_box(10, -5.12, 5.12), _rastrigin10, 0.0),
    "levy20": (_box(20, -10, 10), _levy20, 0.0),
    "styblinski12": (_box(12, -5, 5), _styblinski_tang12, -39.16617 * 12),
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
    return {**(dict(bench.FUNCS) if bench is not None else OWN_PROBLEMS), **HARD_PROBLEMS}


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


def _seed_global_rngs(seed: int) -> None:
    """NNI's GP and Metis take no seed argument; Metis draws from ``random`` and numpy's global RNG."""
    random.seed(seed)
    np.random.seed(seed)


def _minimize_flat(fun: Callable[[np.ndarray], Any], x0: np.ndarray, **kwargs: Any) -> Any:
    """scipy.optimize.minimize for NNI 3.0's GP and Metis on a recent scipy, which refuses their
    2-d starting points and 1-element objectives: the same problem, flattened; ``fun`` kept 1-element."""
    from scipy.optimize import minimize

    result = minimize(lambda x, *args: float(np.ravel(fun(x, *args))[0]), np.ravel(x0), **kwargs)
    result.fun = np.atleast_1d(result.fun)
    return result


def nni_gp(space: dict[str, Any], seed: int) -> Any:
    """NNI 3.0's GPTuner with its defaults (needs nni and scikit-learn).

    It keeps a private ``np.random.RandomState()`` seeded from the OS, shared by its search space
    and its scikit-learn regressor, so that object is reseeded in place after the global RNGs."""
    from nni.algorithms.hpo.gp_tuner import GPTuner, util

    util.minimize = _minimize_flat
    _seed_global_rngs(seed)
    tuner = GPTuner(optimize_mode="minimize")
    tuner._random_state.seed(seed)
    tuner.update_search_space(space)
    return tuner


def nni_metis(space: dict[str, Any], seed: int) -> Any:
    """NNI 3.0's MetisTuner with its defaults (needs nni, scikit-learn and statsmodels)."""
    from nni.algorithms.hpo.metis_tuner import MetisTuner, lib_acquisition_function

    lib_acquisition_function.minimize = _minimize_flat
    _seed_global_rngs(seed)
    tuner = MetisTuner(optimize_mode="minimize")
    tuner.update_search_space(space)
    return tuner


def nni_dngo(space: dict[str, Any], seed: int) -> Any:
    """NNI 3.0's DNGOTuner with its defaults (needs nni, torch, pybnn 0.0.5 and emcee).

    As shipped: its expected improvement is measured above a fixed 0.95 and, minimising, it picks
    the candidate with the *least* of it (``torch.argmin``). Its OS-seeded RandomState is replaced
    by one seeded with the run's seed; torch's generator (the network's initial weights) is seeded,
    and held to one thread like the other tuners' BLAS."""
    import torch
    from nni.algorithms.hpo.dngo_tuner import DNGOTuner

    _seed_global_rngs(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    tuner = DNGOTuner(optimize_mode="minimize")
    tuner.update_search_space(space)
    tuner.random_state = np.random.RandomState(seed)
    return tuner


PEERS: dict[str, Callable[[dict[str, Any], int], Any]] = {
    "optuna_gp": OptunaGP,
    "nni_gp": nni_gp,
    "nni_metis": nni_metis,
    "nni_dngo": nni_dngo,
}


def best_found(tuner: Any, objective: Objective, trials: int, batch: int,
               start: list[tuple[dict[str, Any], float]] | None = None) -> float:
    """Run ``trials`` trials with ``batch`` in flight (oldest reported first); the best value seen.

    ``start``: finished trials the tuner is told first (ids 0, 1, ...), counted among ``trials``."""
    best, next_id = math.inf, 0
    for params, value in start or []:
        tuner.receive_trial_result(next_id, params, value)
        best, next_id = min(best, value), next_id + 1
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


def start_spec(text: str) -> tuple[str, int]:
    """``--start-from``'s value, ``TUNER:N`` with N a positive number."""
    name, _, count = text.partition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected TUNER:N with N >= 1 (e.g. GP:10), got {text!r}")
    return name, int(count)


def start_trials(name: str, count: int, space: dict[str, Any], objective: Objective, seed: int,
                 bench: ModuleType | None) -> list[tuple[dict[str, Any], float]]:
    """``--start-from TUNER:N``: the first N trials that TUNER suggests with this seed, sequentially,
    and their values: every tuner compared is then told these before it suggests anything, so all
    start from the same trials (a paired comparison instead of each one's own random start)."""
    starter = make_tuner(name, space, seed, bench)
    out: list[tuple[dict[str, Any], float]] = []
    for parameter_id in range(count):
        params = starter.generate_parameters(parameter_id)
        value = objective(params)
        starter.receive_trial_result(parameter_id, params, value)
        out.append((params, value))
    return out


# ---------------------------------------------------------------- multi-fidelity (Hyperband, BOHB)

MAX_BUDGET = 27  # R: a full training run


def _partial_training(p: dict[str, Any], budget: int) -> float:
    """Hartmann-6 seen after ``budget`` of 27 epochs: the final loss plus a bias that shrinks with
    the budget and depends on the configuration, so short runs rank configurations only roughly."""
    x = np.array([p[f"x{i}"] for i in range(6)])
    bias = (1.0 - budget / MAX_BUDGET) * 0.6 * (1.0 + math.sin(5.0 * float(x.sum())))
    return _hartmann6(p) + bias


class NNIAdvisorDriver:
    """NNI 3.0's BOHB or Hyperband advisor, driven as NNI's manager drives it, behind the
    ``generate_parameters`` / ``receive_trial_result`` interface the loops here use.

    The manager's messages, in its order: ``handle_initialize(search space)``, then
    ``handle_request_trial_jobs(concurrency)``; for each finished trial a FINAL metric
    (``handle_report_metric_data``, ``sequence`` 0 as ``nni.report_final_result`` sends it), then
    ``handle_trial_end`` (event SUCCEEDED) and ``handle_request_trial_jobs(1)``. What the advisor
    ``send``s is captured: each NewTrialJob / SendTrialJobParameter is queued for the next
    ``generate_parameters``. Two things are patched on the instance, neither part of the
    algorithm: the command channel is a placeholder (no manager to connect to), and
    ``is_created_in_previous_exp`` answers False (this is no resumed experiment; NNI 3.0's own
    compares these advisors' string ids with an int and raises TypeError)."""

    def __init__(self, advisor: Any, space: dict[str, Any], concurrency: int = 1) -> None:
        from nni.runtime.tuner_command_channel import CommandType

        self.advisor = advisor
        self.new_job_commands = (CommandType.NewTrialJob, CommandType.SendTrialJobParameter)
        self.queued: list[dict[str, Any]] = []
        self.running: dict[int, dict[str, Any]] = {}
        advisor.send = self._capture
        advisor.is_created_in_previous_exp = lambda _parameter_id: False
        advisor.handle_initialize(space)
        advisor.handle_request_trial_jobs(concurrency)

    def _capture(self, command: Any, data: str) -> None:
        import nni

        if command in self.new_job_commands:
            self.queued.append(nni.load(data))

    def generate_parameters(self, parameter_id: int) -> dict[str, Any]:
        if not self.queued:
            raise RuntimeError("the NNI advisor handed out no trial although one was requested")
        job = self.queued.pop(0)
        self.running[parameter_id] = job
        return dict(job["parameters"])

    def receive_trial_result(self, parameter_id: int, params: dict[str, Any], value: float) -> None:
        import nni

        job = self.running.pop(parameter_id)
        trial_job_id = f"trial{parameter_id}"
        self.advisor.handle_report_metric_data({
            "parameter_id": job["parameter_id"], "trial_job_id": trial_job_id, "type": "FINAL",
            "sequence": 0, "value": nni.dump(value)})
        self.advisor.handle_trial_end({"trial_job_id": trial_job_id, "event": "SUCCEEDED",
                                       "hyper_params": nni.dump(job)})
        self.advisor.handle_request_trial_jobs(1)


def _unconnected_command_channel() -> None:
    """Let NNI's advisors be built without a manager: MsgDispatcherBase connects to the URL in
    NNI_TUNER_COMMAND_CHANNEL unless it starts with ws://_unittest_ (NNI's own tests' placeholder)."""
    from nni.runtime import msg_dispatcher_base

    placeholder = "ws://_unittest_placeholder_"
    msg_dispatcher_base.dispatcher_env_vars = msg_dispatcher_base.dispatcher_env_vars._replace(
        NNI_TUNER_COMMAND_CHANNEL=placeholder)


def nni_hyperband(space: dict[str, Any], seed: int) -> NNIAdvisorDriver:
    """NNI 3.0's Hyperband advisor, R = MAX_BUDGET, eta 3, its default exec_mode (parallelism)."""
    from nni.algorithms.hpo.hyperband_advisor import Hyperband

    _unconnected_command_channel()
    _seed_global_rngs(seed)
    advisor = Hyperband(optimize_mode="minimize", R=MAX_BUDGET, eta=3)
    original_update = advisor.handle_update_search_space

    def update_seeded(data: dict[str, Any]) -> None:  # its RandomState is made here, OS-seeded
        original_update(data)
        advisor.random_state.seed(seed)

    advisor.handle_update_search_space = update_seeded
    return NNIAdvisorDriver(advisor, space)


def nni_bohb(space: dict[str, Any], seed: int) -> NNIAdvisorDriver:
    """NNI 3.0's BOHB advisor (needs ConfigSpace and statsmodels), budgets 1..MAX_BUDGET, eta 3,
    its other defaults. Its ConfigSpace is seeded as it is built; its model draws from numpy's
    global RNG."""
    from nni.algorithms.hpo.bohb_advisor import BOHB

    _unconnected_command_channel()
    _seed_global_rngs(seed)
    advisor = BOHB(optimize_mode="minimize", min_budget=1, max_budget=MAX_BUDGET, eta=3)
    original_update = advisor.handle_update_search_space

    def update_seeded(data: dict[str, Any]) -> None:
        original_update(data)
        advisor.search_space.seed(seed)

    advisor.handle_update_search_space = update_seeded
    return NNIAdvisorDriver(advisor, space)


ADVISOR_PEERS: dict[str, Callable[[dict[str, Any], int], NNIAdvisorDriver]] = {
    "nni_hyperband": nni_hyperband,
    "nni_bohb": nni_bohb,
}


#: Optuna's multi-fidelity answer: a sampler with its HyperbandPruner (Optuna's docs pair TPE
#: with it, the closest Optuna comes to BOHB; Random with it is Hyperband's pruning).
OPTUNA_PRUNED = {"optuna_hyperband": "random", "optuna_tpe_hyperband": "tpe"}


def optuna_pruned_regret(name: str, seed: int, total_budget: int) -> float:
    """Optuna 5's way (needs optuna): each trial trains epoch by epoch, reports every epoch's
    value, and stops when the HyperbandPruner (1 to MAX_BUDGET epochs, reduction factor 3) says
    so; an epoch costs one unit of ``total_budget``. Scored like the others: the true regret of
    the best configuration trained for all MAX_BUDGET epochs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=seed) if OPTUNA_PRUNED[name] == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(sampler=sampler, pruner=optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=MAX_BUDGET, reduction_factor=3))
    spent, best = 0, math.inf
    while spent < total_budget:
        trial = study.ask()
        params = {f"x{i}": trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)}
        for epoch in range(1, MAX_BUDGET + 1):
            value = _partial_training(params, epoch)
            spent += 1
            if epoch == MAX_BUDGET:
                best = min(best, _hartmann6(params))
                study.tell(trial, value)
                break
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
            if spent >= total_budget:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)  # out of budget mid-run
                break
    return best - (-3.32237)


def multi_fidelity_regret(name: str, seed: int, total_budget: int) -> float:
    """Regret of the best configuration run at the full budget, once ``total_budget`` epochs are spent.

    Hyperband and BOHB hand out budgets; any other tuner runs every trial at the full budget."""
    if name in OPTUNA_PRUNED:
        return optuna_pruned_regret(name, seed, total_budget)
    space = {f"x{i}": {"_type": "uniform", "_value": [0, 1]} for i in range(6)}
    tuner: Any
    if name == "Hyperband":
        args = {"optimize_mode": "minimize", "R": MAX_BUDGET, "eta": 3, "seed": seed}
        tuner = create_tuner(name, args, space)
    elif name == "BOHB":
        tuner = create_tuner(name, {"optimize_mode": "minimize", "min_budget": 1, "max_budget": MAX_BUDGET,
                                    "eta": 3, "seed": seed}, space)
    elif name in ADVISOR_PEERS:
        tuner = ADVISOR_PEERS[name](space, seed)
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
    if name not in ("PBT", "nni_pbt"):
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
    if name == "nni_pbt":
        tuner = nni_pbt(space, seed, population)
    else:
        args = {"optimize_mode": "minimize", "population_size": population, "seed": seed}
        tuner = create_tuner("PBT", args, space)
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


def nni_pbt(space: dict[str, Any], seed: int, population: int) -> Any:
    """NNI 3.0's PBTTuner with its defaults but ``population_size`` (needs nni).

    Its folders are only named (``all_checkpoint_dir/<member>/<step>``: the harness keeps the
    checkpoints in a dict by name). It draws from ``random`` and numpy's global RNG (seeded) and
    from new OS-seeded ``np.random.RandomState()`` objects (the first population, each
    exploit-and-explore): those are seeded here from a sequence that follows the run's seed."""
    from nni.algorithms.hpo import pbt_tuner

    _seed_global_rngs(seed)
    seeds = iter(range(seed * 1_000_003, seed * 1_000_003 + 1_000_000))
    state_class = np.random.RandomState

    def seeded(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            np.random.RandomState = lambda *_: state_class(next(seeds))  # type: ignore[assignment,misc]
            try:
                return method(*args)
            finally:
                np.random.RandomState = state_class  # type: ignore[misc]
        return call

    pbt_tuner.exploit_and_explore = seeded(pbt_tuner.exploit_and_explore)
    tuner = pbt_tuner.PBTTuner(optimize_mode="minimize", all_checkpoint_dir="/nni-pbt",
                               population_size=population)
    seeded(tuner.update_search_space)(space)
    return tuner


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
    parser.add_argument("--per-seed", action="store_true", help="also print each seed's regret")
    parser.add_argument("--start-from", metavar="TUNER:N", type=start_spec,
                        help="every tuner is first told the N trials TUNER suggests with the same seed "
                             "(e.g. GP:10, tunebus GP's random cold start), then suggests the rest")
    parser.add_argument("--multi-fidelity", action="store_true",
                        help="Hyperband/BOHB vs full-budget tuners on a budgeted Hartmann-6 "
                             "(--tuners Hyperband,BOHB,Random,TPE; with NNI nni_hyperband, nni_bohb; "
                             "with optuna optuna_hyperband, optuna_tpe_hyperband)")
    parser.add_argument("--pbt", action="store_true",
                        help="PBT vs full runs of other tuners on a toy training problem "
                             "(--tuners PBT,Random,TPE)")
    args = parser.parse_args()
    if args.start_from and (args.pbt or args.multi_fidelity):
        parser.error("--start-from applies to the regret runs, not to --pbt or --multi-fidelity")
    if args.start_from and args.start_from[1] >= args.trials:
        parser.error(f"--start-from {args.start_from[1]} trials leaves none of --trials {args.trials} "
                     "to suggest")
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
        starts: dict[int, list[tuple[dict[str, Any], float]] | None] = dict.fromkeys(seeds)
        if args.start_from:  # drawn once per seed, shared by every tuner and batch size
            try:
                starter, count = args.start_from
                starts = {s: start_trials(starter, count, space, objective, s, bench) for s in seeds}
            except TunerConfigError as exc:
                print(f"{func:12s} start from {args.start_from[0]}: n/a: {exc}", flush=True)
                continue
        for name in args.tuners.split(","):
            for batch in (int(b) for b in args.batch.split(",")):
                start = time.perf_counter()
                try:
                    regrets = [
                        best_found(make_tuner(name, space, s, bench), objective, args.trials, batch,
                                   starts[s]) - optimum
                        for s in seeds
                    ]
                    if args.per_seed:
                        print(f"{func:12s} {name:14s} {batch:5d}  per seed:",
                              " ".join(f"{r:.4f}" for r in regrets), flush=True)
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
