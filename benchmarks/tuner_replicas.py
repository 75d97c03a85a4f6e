"""Tuner scale-out: a slow experiment holds up only itself, and tuner replicas add CPU.

Real processes on a local deployment (``deploy/local up``, started here with a private state dir
and ports unless ``TUNEBUS_LOCAL_DIR`` is set). Experiments are started by publishing their
start messages (as any program may), and followed by the events the services publish
(``experiment.status``, ``trial.suggested``), not by reading storage.

    .venv/bin/python benchmarks/tuner_replicas.py slow [--experiments 50] [--trials 100]
    .venv/bin/python benchmarks/tuner_replicas.py cpu [--experiments 8] [--trials 30] [--repeat 3]

* ``slow``: ``--experiments`` no-op experiments (Random tuner, concurrency 4), once alone and
  once beside one more whose custom tuner sleeps 0.5 s in every ``generate_parameters``: when
  the others have all ended (their last finish, median finish), and how many suggestions the
  slow one had made by then. Each run on a purged stack (``deploy/local down --purge``), the
  order alternating with ``--repeat``; the medians of both at the end.
* ``cpu``: ``--experiments`` experiments with the GP tuner (a suggestion costs 0.4-1.5 s of CPU
  once it has a few results), no-op trials, with 1 and 2 tuner replicas (``up --tuners 2``),
  each on a purged stack, the order alternating with ``--repeat``: wall time to all DONE, and the
  ratio of the medians.

Bounded: each run stops with an error past ``--deadline`` seconds (default 1800).
The private stack it starts (``.local-bench``) is stopped when it ends. Since every run purges
its stack, a stack given by ``TUNEBUS_LOCAL_DIR`` is used only with ``--purge-given-stack``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from local_stack import deploy_local_env  # noqa: E402  (this script's folder is on sys.path when it runs)

from shared.bus import Bus  # noqa: E402
from shared.code_archive import build_code_archive  # noqa: E402
from shared.messages import ExperimentStart, ExperimentStop  # noqa: E402
from shared.storage import BlobStore, Layout  # noqa: E402
from shared.topology import EVENTS_EXCHANGE  # noqa: E402

DEPLOY_LOCAL = REPO / "deploy" / "local"
TRIAL = "import nni; p = nni.get_next_parameter(); nni.report_final_result(p['x'])"
SLOW_TUNER = '''
import time
from nni.tuner import Tuner


class Slow(Tuner):
    def update_search_space(self, search_space):
        pass

    def generate_parameters(self, parameter_id, **kwargs):
        time.sleep(0.5)
        return {"x": 0.001 * parameter_id, "y": 1.0}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        pass
'''
FINISHED = ("DONE", "STOPPED", "ERROR")


def _config(trials: int, concurrency: int, tuner: dict[str, Any]) -> dict[str, Any]:
    return {"searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]},
                            "y": {"_type": "uniform", "_value": [0, 1]}},
            "trialCommand": f'python3 -c "{TRIAL}"', "trialConcurrency": concurrency,
            "maxTrialNumber": trials, "maxExperimentDuration": "2h", "tuner": tuner,
            "trainingService": {"platform": "local"}}


def stack_env(tuners: int) -> dict[str, str]:
    """``deploy/local up --tuners N`` (the ones already running stay), and the admin's environment."""
    return deploy_local_env("--tuners", str(tuners), admin=True)


def purge_stack() -> None:
    """``deploy/local down --purge``: every part stopped (extra tuner replicas too), every blob
    and queue deleted. Azurite slows as its container fills, so a run on a stack that holds an
    earlier run's blobs would be slower whatever it measures."""
    subprocess.run([str(DEPLOY_LOCAL), "down", "--purge"], check=True, capture_output=True)


class Events:
    """Finished experiments and suggestions counted from the services' events."""

    def __init__(self) -> None:
        self.finished: dict[str, tuple[str, float]] = {}
        self.suggested: dict[str, int] = {}
        self.started = time.monotonic()

    async def follow(self, url: str) -> aio_pika.abc.AbstractConnection:
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in ("experiment.status", "trial.suggested"):
            await queue.bind(EVENTS_EXCHANGE, routing_key=key)
        await queue.consume(self._on_event, no_ack=True)
        return connection

    async def _on_event(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        experiment = body.get("experiment_id", "")
        if message.routing_key == "trial.suggested":
            self.suggested[experiment] = self.suggested.get(experiment, 0) + 1
        elif body.get("status") in FINISHED and experiment not in self.finished:
            self.finished[experiment] = (body["status"], time.monotonic() - self.started)

    async def until_finished(self, ids: list[str], deadline: float, expected: str = "DONE") -> None:
        while not all(i in self.finished for i in ids):
            if time.monotonic() - self.started > deadline:
                raise SystemExit(f"not finished within {deadline} s: {sum(i in self.finished for i in ids)}"
                                 f"/{len(ids)}")
            await asyncio.sleep(0.2)
        failed = {i: self.finished[i][0] for i in ids if self.finished[i][0] != expected}
        if failed:
            raise SystemExit(f"not DONE: {failed}")


async def _store_slow_tuner(env: dict[str, str], experiment_id: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "slow.py").write_text(textwrap.dedent(SLOW_TUNER))
        blob = Layout(experiment_id).algorithm_code_archive("tuner")
        async with BlobStore(env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                             env.get("TUNEBUS_STORAGE_CONTAINER", "tunebus")) as store:
            await store.write_bytes(blob, build_code_archive(Path(tmp)))
    return blob


async def run_slow(env: dict[str, str], experiments: int, trials: int, with_slow: bool,
                   deadline: float) -> dict[str, Any]:
    events = Events()
    connection = await events.follow(env["TUNEBUS_AMQP_URL"])
    bus = Bus(env["TUNEBUS_AMQP_URL"], service="benchmark")
    await bus.connect()
    tag = uuid.uuid4().hex[:6]
    slow_id = f"slow{tag}"
    try:
        if with_slow:
            blob = await _store_slow_tuner(env, slow_id)
            await bus.publish(ExperimentStart(experiment_id=slow_id, config=_config(
                trials, 2, {"className": "slow.Slow"}), algorithm_code={"tuner": blob}))
        ids = [f"fast{tag}{n:02d}" for n in range(experiments)]
        events.started = time.monotonic()
        for experiment_id in ids:
            await bus.publish(ExperimentStart(experiment_id=experiment_id,
                                              config=_config(trials, 4, {"name": "Random"})))
        await events.until_finished(ids, deadline)
        ends = sorted(events.finished[i][1] for i in ids)
        slow_suggested = events.suggested.get(slow_id, 0)
        if with_slow:
            await bus.publish(ExperimentStop(experiment_id=slow_id))
            await events.until_finished([slow_id], deadline, expected="STOPPED")
    finally:
        await bus.close()
        await connection.close()
    return {"mode": "slow", "with_slow_experiment": with_slow, "experiments": experiments,
            "trials_each": trials, "last_finish_s": round(ends[-1], 1),
            "median_finish_s": round(statistics.median(ends), 1), "first_finish_s": round(ends[0], 1),
            **({"slow_suggestions_by_then": slow_suggested} if with_slow else {})}


async def run_cpu(env: dict[str, str], experiments: int, trials: int, tuners: int,
                  deadline: float) -> dict[str, Any]:
    events = Events()
    connection = await events.follow(env["TUNEBUS_AMQP_URL"])
    bus = Bus(env["TUNEBUS_AMQP_URL"], service="benchmark")
    await bus.connect()
    tag = uuid.uuid4().hex[:6]
    ids = [f"gp{tag}{n:02d}" for n in range(experiments)]
    load = Path("/proc/loadavg").read_text().split()[0]  # the machine is shared: say how busy it was
    try:
        events.started = time.monotonic()
        for experiment_id in ids:
            await bus.publish(ExperimentStart(experiment_id=experiment_id, config=_config(
                trials, 2, {"name": "GP", "classArgs": {"optimize_mode": "maximize"}})))
        await events.until_finished(ids, deadline)
    finally:
        await bus.close()
        await connection.close()
    wall = max(events.finished[i][1] for i in ids)
    return {"mode": "cpu", "tuners": tuners, "experiments": experiments, "trials_each": trials,
            "wall_s": round(wall, 1), "load_before": float(load),
            "experiments_per_replica": _experiments_per_replica(tag)}


def _experiments_per_replica(tag: str) -> dict[str, int]:
    """How many of this run's experiments each tuner replica built a session for (its log)."""
    logs = Path(os.environ["TUNEBUS_LOCAL_DIR"]) / "logs"
    counts = {}
    for log in sorted(logs.glob("tuner*.log")):
        text = log.read_text(errors="replace")
        counts[log.stem] = len({line.split()[5] for line in text.splitlines()
                                if f"experiment gp{tag}" in line and "rebuilt" in line})
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("slow", "cpu"))
    parser.add_argument("--experiments", type=int)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=1800.0)
    parser.add_argument("--purge-given-stack", action="store_true",
                        help="with TUNEBUS_LOCAL_DIR set: run on that stack, deleting its experiments")
    args = parser.parse_args()
    private_stack = "TUNEBUS_LOCAL_DIR" not in os.environ
    if not private_stack and not args.purge_given_stack:
        parser.error("every run purges its stack (deploy/local down --purge); TUNEBUS_LOCAL_DIR is set, "
                     "so that would delete the experiments of the stack there: unset it (a private "
                     "stack is started) or pass --purge-given-stack")
    if private_stack:
        os.environ.update(TUNEBUS_LOCAL_DIR=str(REPO / ".local-bench"), TUNEBUS_AMQP_PORT="25681",
                          TUNEBUS_BLOB_PORT="25610", TUNEBUS_DASHBOARD_PORT="25680")
        os.environ.setdefault("TUNEBUS_AZURITE_DIR", str(REPO / ".local" / "azurite"))
    try:
        results = run_repeats(args)
    finally:
        if private_stack:  # the stack this script started for itself does not outlive it
            subprocess.run([str(DEPLOY_LOCAL), "down"], check=False, capture_output=True)
    report(args.mode, results)


def run_repeats(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of ``--repeat`` rounds, each on a purged stack; their results in order."""
    results: list[dict[str, Any]] = []
    for repeat in range(args.repeat):
        # Each run on a purged stack (Azurite slows as its container fills: a run after another is
        # slower whatever it does), the two variants' order alternating from one repeat to the next.
        swap = repeat % 2 == 1
        if args.mode == "slow":
            for with_slow in (swap, not swap):
                purge_stack()
                env = stack_env(1)  # one tuner: what a slow experiment could hold up
                run = run_slow(env, args.experiments or 50, args.trials or 100, with_slow, args.deadline)
                results.append(asyncio.run(run))
                print(json.dumps(results[-1]), flush=True)
        else:
            for tuners in (2, 1) if swap else (1, 2):
                purge_stack()
                env = stack_env(tuners)
                time.sleep(6)  # the replicas see each other and share the shards out (shared/shards.py)
                # Warm-up, not counted: each replica imports the GP's libraries on its first experiment.
                asyncio.run(run_cpu(env, 6, 2, tuners, args.deadline))
                results.append(asyncio.run(run_cpu(env, args.experiments or 8, args.trials or 30, tuners,
                                                   args.deadline)))
                print(json.dumps(results[-1]), flush=True)
    return results


def report(mode: str, results: list[dict[str, Any]]) -> None:
    """The medians of both variants, and their ratio."""
    if mode == "slow":
        last = {key: statistics.median(r["last_finish_s"] for r in results
                                       if r["with_slow_experiment"] == key) for key in (False, True)}
        print(json.dumps({"median_last_finish_s": {"alone": last[False], "beside_slow": last[True]},
                          "ratio": round(last[True] / last[False], 2)}), flush=True)
    if mode == "cpu":
        walls = {n: statistics.median(r["wall_s"] for r in results if r["tuners"] == n) for n in (1, 2)}
        print(json.dumps({"median_wall_s": walls, "speedup": round(walls[1] / walls[2], 2)}), flush=True)


if __name__ == "__main__":
    main()
