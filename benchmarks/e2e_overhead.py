"""End-to-end overhead: 40 NNI-style no-op trials at concurrency 4, `tunebus create` to DONE.

Each trial is a real process: ``import nni``, get its parameters, report a final result. What
is measured is everything around that: the CLI (validation, code upload, publish), the
dispatcher, the tuner, the submitter starting processes, metric blobs, the ingestor, and the
CLI noticing DONE. The stack is the local deployment (``deploy/local up``; started here if it
is not running). Each run's experiment is deleted afterwards (untimed), so that runs do not fill
Azurite's container, which slows it down.

    .venv/bin/python benchmarks/e2e_overhead.py [--runs 3] [--trials 40] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from local_stack import delete_experiments, deploy_local_env

REPO = Path(__file__).resolve().parents[1]
TUNEBUS = Path(sys.executable).parent / "tunebus"

TRIAL = """import nni
params = nni.get_next_parameter()
nni.report_final_result(params["x"])
"""


def write_experiment(folder: Path, trials: int, concurrency: int, tuner: str) -> Path:
    (folder / "trial.py").write_text(TRIAL)
    (folder / "search_space.json").write_text(json.dumps({"x": {"_type": "uniform", "_value": [0, 1]}}))
    config = folder / "config.yml"
    config.write_text(
        "experimentName: e2e-overhead\n"
        "searchSpaceFile: search_space.json\n"
        "trialCommand: python3 trial.py\n"
        "trialCodeDirectory: .\n"
        f"trialConcurrency: {concurrency}\n"
        f"maxTrialNumber: {trials}\n"
        "maxExperimentDuration: 10m\n"
        f"tuner:\n  name: {tuner}\n  classArgs:\n    optimize_mode: maximize\n"
        "trainingService:\n  platform: local\n"
    )
    return config


def stack_env() -> dict[str, str]:
    """Environment for the CLI, pointing at the local deployment (started if needed)."""
    return deploy_local_env()


def run_once(config: Path, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    result = subprocess.run([str(TUNEBUS), "create", "--config", str(config), "--wait", "--json"],
                            env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"tunebus create failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed, json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tuner", default="TPE")
    args = parser.parse_args()
    env = stack_env()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        config = write_experiment(Path(tmp), args.trials, args.concurrency, args.tuner)
        for run in range(1, args.runs + 1):
            elapsed, summary = run_once(config, env)
            succeeded = dict(summary["trials"]).get("SUCCEEDED", 0)  # type: ignore[call-overload]
            if summary["status"] != "DONE" or succeeded != args.trials:
                raise SystemExit(f"run {run} did not end DONE with {args.trials} trials: {summary}")
            times.append(elapsed)
            delete_experiments([str(summary["id"])], env)
            print(f"run {run}: {elapsed:.2f} s ({summary['status']}, {succeeded} trials SUCCEEDED)",
                  flush=True)
    print(f"median of {args.runs}: {statistics.median(times):.2f} s for {args.trials} trials at "
          f"concurrency {args.concurrency} (tuner {args.tuner})")


if __name__ == "__main__":
    main()
