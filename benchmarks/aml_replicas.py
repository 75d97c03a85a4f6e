"""AML submitter replicas: 64 no-op trials at concurrency 32 on the AML stand-in, 1 replica vs 4,
through SDK v1 (azureml-core) and SDK v2 (azure-ai-ml), each on its own stand-in.

azureml-core's calls block, and one workspace client serializes them, so each submitter replica
submits one run at a time (``TUNEBUS_AML_SUBMIT_THREADS=1``, the default) and a submission
takes about a second. The stand-in (NOT Azure ML) is set to exactly that: 1 s per
``Experiment.submit``, no queueing or preparation delay, trial command ``true``. With one
replica the experiment is bound by 64 x 1 s of submissions; with four replicas sharing the
``tunebus.submit`` work queue it should take about a quarter of that (target: at least 3.5 times less).

Each measurement is a fresh stack on its own RabbitMQ vhost and blob container: tuner,
dispatcher and metric ingestor (one each) and N stand-in submitters, started here as
processes against the local infrastructure (``deploy/local up --infra-only``, started if it
is not running). Two times are taken: the experiment's own duration (the dispatcher's
``started_at`` to ``ended_at``: what the replicas change) and ``tunebus create --config …
--wait --json`` to DONE (that plus the CLI's own start, about 1.5 s, the same for both).

    .venv/bin/python benchmarks/aml_replicas.py [--runs 3] [--trials 64] [--concurrency 32]
        [--latency 1.0] [--replicas 1 4] [--sdk v1 v2] [--keep]

``--keep`` keeps each run's folder (service logs, the stand-in's run registry); the services
log at ``BENCH_LOG_LEVEL`` (WARNING by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from local_stack import deploy_local_env  # noqa: E402  (this script's folder is on sys.path when it runs)

from shared.health import is_healthy  # noqa: E402

VENV_BIN = Path(sys.executable).parent
DEPLOY_LOCAL = REPO / "deploy" / "local"
CORE_SERVICES = ("tuner", "dispatcher", "metric_ingestor")

CONFIG = """experimentName: aml-replicas
searchSpace:
  x: {{_type: uniform, _value: [0, 1]}}
trialCommand: "true"
trialCodeDirectory: .
trialConcurrency: {concurrency}
maxTrialNumber: {trials}
maxExperimentDuration: 30m
tuner:
  name: Random
trainingService:
  platform: aml
  subscription_id: 00000000-0000-0000-0000-000000000000
  resource_group: benchmark-rg
  workspace_name: benchmark-ws
  compute_target: cpu-cluster
  docker_image: msranni/nni
"""


def infra_env() -> dict[str, str]:
    """Environment pointing at the local RabbitMQ and Azurite (started if needed)."""
    # The operators' account: each run gets a vhost of its own, which it grants itself.
    env = deploy_local_env("--infra-only", admin=True)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def rabbitmqctl(*args: str) -> None:
    subprocess.run([str(DEPLOY_LOCAL), "ctl", *args], check=True, stdout=subprocess.DEVNULL)


class Stack:
    """The services of one measurement, as processes; stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, env: dict[str, str], run_dir: Path) -> None:
        self.env = env
        self.run_dir = run_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, service: str, index: int, **extra: str) -> None:
        name = f"{service}-{index}"
        health = self.run_dir / f"{name}.health"
        env = {**self.env, "TUNEBUS_HEALTH_FILE": str(health), **extra}
        with (self.run_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=env, cwd=REPO,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while not is_healthy(health):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {self.run_dir / (name + '.log')}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def experiment_seconds(env: dict[str, str], experiment_id: str) -> float:
    """The experiment's own duration, from the dispatcher's state: started_at to ended_at."""

    from azure.storage.blob import ContainerClient

    from shared.state import ExperimentState
    from shared.storage import Layout

    container = ContainerClient.from_connection_string(env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                                                       env["TUNEBUS_STORAGE_CONTAINER"])
    with container:
        body = container.download_blob(Layout(experiment_id).state_doc).readall()
    state = ExperimentState.model_validate_json(body)
    if state.ended_at is None:
        raise SystemExit(f"experiment {experiment_id} has not ended")
    return (state.ended_at - state.started_at).total_seconds()


def measure(base_env: dict[str, str], replicas: int, sdk: str, args: argparse.Namespace,
            folder: Path) -> tuple[float, float]:
    """``tunebus create`` to DONE, and the experiment's own duration, with ``replicas`` submitters."""
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "tunebus-admin", ".*", ".*", ".*")
    run_dir = folder / f"{sdk}-{replicas}r-{vhost}"
    run_dir.mkdir()
    env = {**base_env,
           "TUNEBUS_AMQP_URL": base_env["TUNEBUS_AMQP_URL"].rstrip("/") + "/" + vhost,
           "TUNEBUS_STORAGE_CONTAINER": vhost,
           "TUNEBUS_WORK_DIR": str(run_dir / "work"),
           "TUNEBUS_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")}
    submitter_env = {
        "TUNEBUS_AML_STANDIN": "1",
        "TUNEBUS_AML_SDK": sdk,
        "TUNEBUS_AML_STANDIN_SUBMIT_LATENCY": str(args.latency),
        "TUNEBUS_AML_SUBMIT_THREADS": "1",
        "TUNEBUS_AML_POLL_SECONDS": "0.2",  # one delay-queue hop: the last run's end is seen soon
        "TUNEBUS_MAX_JOBS": "2",  # small prefetch: a replica holds no more than it can start soon
    }
    stack = Stack(env, run_dir)
    try:
        for service in CORE_SERVICES:
            stack.start(service, 0)
        for index in range(replicas):
            stack.start("aml_submitter", index, **submitter_env)
        code = run_dir / "experiment"  # the trial code folder: the config alone (the trial is `true`)
        code.mkdir()
        config = code / "config.yml"
        config.write_text(CONFIG.format(trials=args.trials, concurrency=args.concurrency))
        started = time.perf_counter()
        result = subprocess.run([str(VENV_BIN / "tunebus"), "create", "--config", str(config), "--wait",
                                 "--json"], env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        summary = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
        if summary.get("status") != "DONE" or summary.get("trials") != {"SUCCEEDED": args.trials}:
            raise SystemExit(f"run with {replicas} {sdk} replica(s) did not end DONE with {args.trials} "
                             f"SUCCEEDED:\n{result.stdout}\n{result.stderr}\nlogs in {run_dir}")
        return elapsed, experiment_seconds(env, str(summary["id"]))
    finally:
        stack.stop()
        subprocess.run([str(DEPLOY_LOCAL), "ctl", "delete_vhost", vhost], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=1.0, help="stand-in seconds per submission")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sdk", nargs="+", choices=["v1", "v2"], default=["v1", "v2"],
                        help="the Azure ML SDK(s) the submitters use (TUNEBUS_AML_SDK)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (logs)")
    args = parser.parse_args()
    env = infra_env()
    folder = Path(tempfile.mkdtemp(prefix="tunebus-aml-bench-"))
    keys = [(sdk, n) for sdk in args.sdk for n in args.replicas]
    cli: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
    own: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
    try:
        for run in range(args.runs):
            for sdk, replicas in keys:  # interleaved, so that drift hits all alike
                wall, experiment = measure(env, replicas, sdk, args, folder)
                cli[(sdk, replicas)].append(wall)
                own[(sdk, replicas)].append(experiment)
                print(f"run {run + 1}: SDK {sdk}, {replicas} replica(s): experiment {experiment:.1f} s, "
                      f"tunebus create --wait {wall:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{args.trials} no-op trials, concurrency {args.concurrency}, {args.latency:g} s per submission, "
          f"1 submission thread per replica; median of {args.runs}:")
    for sdk in args.sdk:
        for label, times in (("experiment (started_at to ended_at)", own), ("tunebus create --wait", cli)):
            medians = {n: statistics.median(times[(sdk, n)]) for n in args.replicas}
            print(f"  SDK {sdk}, {label}:")
            for replicas, median in medians.items():
                runs = ", ".join(f"{t:.1f}" for t in times[(sdk, replicas)])
                print(f"    {replicas} replica(s): {median:.1f} s  (runs: {runs})")
            if len(medians) >= 2:
                first, last = args.replicas[0], args.replicas[-1]
                ratio = medians[first] / medians[last]
                print(f"    ratio {first} -> {last} replicas: {ratio:.2f}x less wall time")


if __name__ == "__main__":
    main()
