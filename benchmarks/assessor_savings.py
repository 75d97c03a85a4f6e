"""Assessor savings: trial-seconds spent with and without early stopping, at the same best result.

One experiment, run once without an assessor and once with each built-in assessor, on the local
deployment (``deploy/local up``; started here if it is not running). The tuner is Random with a
fixed seed, so every run gets the same parameters for the same parameter id, and the trial's
learning curve is a function of its parameters alone (value at epoch e is
``x * (1 - exp(-e / 3))`` plus noise seeded by ``x``): the runs differ only in what the assessor
stopped. The best curve dominates every other at every step, so an assessor that works never
stops it and the best value must come out identical.

Trial-seconds are the sum over trials of (ended - started) from the experiment's state document;
epochs (intermediate results reported, summed over trials) measure the same saving independently
of how loaded the machine is. The ingestor polls metric blobs every 2 s by default, so an
assessor acts a few seconds after a result: epochs here last 0.5 s (20 epochs, 10 s a trial).

    .venv/bin/python benchmarks/assessor_savings.py [--trials 20] [--concurrency 4] [--seed 5]
        [--epoch-seconds 0.5] [--assessors none,Medianstop,Curvefitting]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from e2e_overhead import stack_env  # this script's folder is on sys.path when it is run

from shared.messages import TrialStatus
from shared.records import read_full_state
from shared.state import ExperimentState, best_trial
from shared.storage import BlobStore

TUNEBUS = Path(sys.executable).parent / "tunebus"
EPOCHS = 20

TRIAL = """\
import math, random, time
import nni

x = nni.get_next_parameter()["x"]
noise = random.Random(repr(x))  # the same parameters give the same curve in every run
value = 0.0
for epoch in range(1, {epochs} + 1):
    time.sleep({epoch_seconds})
    value = x * (1 - math.exp(-epoch / 3)) + noise.gauss(0, 0.002)
    nni.report_intermediate_result(value)
nni.report_final_result(value)
"""

ASSESSORS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "Medianstop": {"name": "Medianstop", "classArgs": {"optimize_mode": "maximize", "start_step": 5}},
    "Curvefitting": {"name": "Curvefitting", "classArgs": {"optimize_mode": "maximize", "epoch_num": EPOCHS,
                                                           "start_step": 6, "threshold": 0.95, "gap": 1}},
}


@dataclass(frozen=True)
class RunResult:
    """What one run cost and found."""

    assessor: str
    experiment_id: str
    status: str
    wall_seconds: float
    trial_seconds: float
    trials: int
    stopped: int
    epochs: int
    best_value: float | None
    best_parameters: dict[str, Any] | None


def write_experiment(folder: Path, args: argparse.Namespace, assessor: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.py").write_text(TRIAL.format(epochs=EPOCHS, epoch_seconds=args.epoch_seconds))
    (folder / "search_space.json").write_text(json.dumps({"x": {"_type": "uniform", "_value": [0, 1]}}))
    config: dict[str, Any] = {
        "experimentName": "assessor-savings",
        "searchSpaceFile": "search_space.json",
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": ".",
        "trialConcurrency": args.concurrency,
        "maxTrialNumber": args.trials,
        "maxExperimentDuration": "30m",
        "tuner": {"name": "Random", "classArgs": {"seed": args.seed}},
        "trainingService": {"platform": "local"},
    }
    if assessor is not None:
        config["assessor"] = assessor
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def read_state(env: dict[str, str], experiment_id: str) -> ExperimentState:
    async with BlobStore(env["TUNEBUS_STORAGE_CONNECTION_STRING"], env["TUNEBUS_STORAGE_CONTAINER"]) as store:
        state = await read_full_state(store, experiment_id)  # every trial, the ended log's too
    if state is None:
        raise SystemExit(f"experiment {experiment_id}: no state document")
    return state


def tunebus(env: dict[str, str], *args: str, timeout: float = 1800) -> Any:
    """Run the CLI with ``--json``; the JSON value it prints last."""
    try:
        result = subprocess.run([str(TUNEBUS), *args, "--json"], env=env, capture_output=True, text=True,
                                check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"tunebus {' '.join(args)}: no result after {timeout:.0f} s") from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode not in (0, 1) or not lines:
        raise SystemExit(f"tunebus {' '.join(args)} failed ({result.returncode}):\n"
                         f"{result.stdout}\n{result.stderr}")
    return json.loads(lines[-1])


def run_once(name: str, folder: Path, args: argparse.Namespace, env: dict[str, str]) -> RunResult:
    experiment_id = f"savings-{name.lower()}-{uuid.uuid4().hex[:6]}"
    config = write_experiment(folder / name, args, ASSESSORS[name])
    started = time.perf_counter()
    summary = tunebus(env, "create", "--config", str(config), "--id", experiment_id, "--wait")
    wall = time.perf_counter() - started
    state = asyncio.run(read_state(env, experiment_id))
    trials = list(state.trials.values())
    best = best_trial(state)
    return RunResult(
        assessor=name, experiment_id=experiment_id, status=str(summary["status"]), wall_seconds=wall,
        trial_seconds=sum(t.duration_seconds() or 0.0 for t in trials), trials=len(trials),
        stopped=sum(t.status == TrialStatus.EARLY_STOPPED for t in trials),
        epochs=sum(t.metric_count - (t.final_value is not None) for t in trials),
        best_value=None if best is None else best.final_value,
        best_parameters=None if best is None else best.parameters,
    )


def report(results: list[RunResult]) -> None:
    baseline = next((r for r in results if r.assessor == "none"), None)
    print(f"\n{'assessor':<13} {'status':<6} {'trials':>6} {'stopped':>7} {'epochs':>6} {'trial-s':>8} "
          f"{'saved':>6} {'wall-s':>7}  best value (x)")
    for r in results:
        saved = "-" if baseline is None else f"{1 - r.trial_seconds / baseline.trial_seconds:.0%}"
        x = "-" if r.best_parameters is None else f"{r.best_parameters['x']:.4f}"
        value = "-" if r.best_value is None else f"{r.best_value:.6f}"
        print(f"{r.assessor:<13} {r.status:<6} {r.trials:>6} {r.stopped:>7} {r.epochs:>6} "
              f"{r.trial_seconds:>8.1f} {saved:>6} {r.wall_seconds:>7.1f}  {value} ({x})")
    if baseline is not None:
        same = all(r.best_value == baseline.best_value for r in results)
        print(f"best value identical in every run: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5, help="Random tuner seed (same in every run)")
    parser.add_argument("--epoch-seconds", type=float, default=0.5)
    parser.add_argument("--assessors", default=",".join(ASSESSORS),
                        help=f"comma-separated, from {', '.join(ASSESSORS)}")
    args = parser.parse_args()
    names = [n.strip() for n in args.assessors.split(",") if n.strip()]
    unknown = [n for n in names if n not in ASSESSORS]
    if unknown:
        raise SystemExit(f"unknown assessor(s) {unknown}; choose from {list(ASSESSORS)}")
    env = stack_env()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            result = run_once(name, Path(tmp), args, env)
            print(f"{name}: {result.experiment_id} {result.status} in {result.wall_seconds:.1f} s, "
                  f"{result.trial_seconds:.1f} trial-seconds, {result.epochs} epochs, "
                  f"{result.stopped} stopped", flush=True)
            results.append(result)
    report(results)


if __name__ == "__main__":
    main()
