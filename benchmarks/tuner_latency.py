"""Tuner suggestion latency and memory as the history grows.

Run from the project root::

    .venv/bin/python benchmarks/tuner_latency.py                      # TPE, 8 params, up to 2,000 trials
    .venv/bin/python benchmarks/tuner_latency.py --trials 10000 --runs 1

Like the shared benchmark's ``latency`` mode: each suggestion's result is reported at once, and the
figure for a history size is the median time of the 21 suggestions around it. With ``--runs`` > 1
the median over runs is printed too (the machine is shared, so single runs are noisy). The peak
resident memory of the process is printed at the end (it includes Python, numpy and scipy).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.tuner.algorithms import create_tuner  # noqa: E402  (needs the root on sys.path)

MARKS = (100, 250, 500, 1000, 2000, 5000, 10000)


def one_run(name: str, dims: int, trials: int, seed: int) -> dict[int, float]:
    """Median milliseconds per suggestion around each history size of one run."""
    space = {f"p{i}": {"_type": "uniform", "_value": [0, 1]} for i in range(dims)}
    args = {"seed": seed, "optimize_mode": "minimize"} if name != "Random" else {"seed": seed}
    tuner = create_tuner(name, args, space)
    noise = np.random.default_rng(seed)
    marks = [m for m in MARKS if m <= trials]
    samples: dict[int, list[float]] = {m: [] for m in marks}
    learning: dict[int, list[float]] = {m: [] for m in marks}
    for parameter_id in range(trials + 11):
        start = time.perf_counter()
        params = tuner.generate_parameters(parameter_id)
        elapsed = (time.perf_counter() - start) * 1000
        # The search space's own parameters only (an advisor adds its budget or checkpoint folders).
        value = sum((params[key] - 0.3) ** 2 for key in space) + noise.normal(0, 0.01)
        start = time.perf_counter()
        tuner.receive_trial_result(parameter_id, params, float(value))
        learned = (time.perf_counter() - start) * 1000
        for mark in marks:
            if abs(parameter_id - mark) <= 10:
                samples[mark].append(elapsed)
                learning[mark].append(learned)
    LEARNING[name] = {m: statistics.mean(v) for m, v in learning.items()}
    return {m: statistics.median(v) for m, v in samples.items()}


#: Mean milliseconds of ``receive_trial_result`` around each history size, by tuner (last run):
#: where an advisor does its work (a new bracket, BOHB's model, PBT's next step), so a mean.
LEARNING: dict[str, dict[int, float]] = {}


def main() -> None:
    """Print per-run and median-of-runs latency, then peak memory."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tuners", default="TPE")
    parser.add_argument("--dims", type=int, default=8)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for name in args.tuners.split(","):
        runs = [one_run(name, args.dims, args.trials, seed) for seed in range(args.runs)]
        for i, run in enumerate(runs):
            print(f"{name} run {i}: " + ", ".join(f"{m}: {ms:.3f} ms" for m, ms in run.items()), flush=True)
        median = {m: statistics.median(r[m] for r in runs) for m in runs[0]}
        print(
            f"{name} median of {args.runs} runs: "
            + ", ".join(f"{m}: {ms:.3f} ms" for m, ms in median.items())
        )
        print(f"{name} learning a result, mean (last run): "
              + ", ".join(f"{m}: {ms:.3f} ms" for m, ms in LEARNING[name].items()))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux
    print(f"peak resident memory: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
