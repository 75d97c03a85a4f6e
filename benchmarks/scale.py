"""Scale: what an experiment costs per trial as it grows, and with many experiments at once.

Real processes on the local deployment (``deploy/local up``, started here if it is not running;
use ``TUNEBUS_LOCAL_DIR`` and the port variables for a private one). No-op NNI trials (import
nni, get the parameters, report a final result), Random tuner. Reported per run:

* wall time from ``tunebus create`` to DONE, and per trial;
* CPU seconds per trial of each service process (its own ``utime+stime``; the trials' CPU, which
  the submitter reaps, apart), of the RabbitMQ node and of Azurite;
* bytes Azurite wrote to disk per trial (``/proc/<pid>/io`` ``write_bytes``). Beware: beside
  the blobs, Azurite rewrites its own metadata database (one JSON file listing every blob of the
  container, ~3 KB a trial) every few seconds while anything changes, so this grows with the
  container's blob count whatever tunebus writes; hence also
* bytes Azurite read per trial (``rchar``: the requests it received, bodies included, and the
  blob data it read from disk to answer), which follows what the services send and fetch;
* the orchestration CPU per trial (the four services' own CPU, summed), and the size of the
  experiment's ``state.json`` at its end and of Azurite's metadata database;
* each service's peak RSS during the run (``VmHWM``, reset before the run).

    .venv/bin/python benchmarks/scale.py single --trials 100 1000 [--concurrency 16]
    .venv/bin/python benchmarks/scale.py many --experiments 50 --trials 100 [--concurrency 4]

Each run's experiments are deleted from storage after its numbers are printed (untimed;
``--keep`` leaves them), so that a run does not slow the runs after it on the same stack; for
thousands of trials that takes minutes on Azurite, and ``--keep`` with ``deploy/local down
--purge`` is quicker. At 10,000 trials Azurite dominates
the run: on disk it rewrites its whole metadata database every 5 s, and in memory too each
request scans every blob of the account (``azurite_growth.py``); ``TUNEBUS_AZURITE_IN_MEMORY=1``
keeps it off disk. See the README's Performance section.

Bounded: each run stops with an error past ``--deadline`` seconds (default 3600). Needs to run as
the user that started the stack (it reads the services' ``/proc`` entries).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from local_stack import delete_experiments, deploy_local_env

REPO = Path(__file__).resolve().parents[1]
TUNEBUS = Path(sys.executable).parent / "tunebus"
DEPLOY_LOCAL = REPO / "deploy" / "local"
STATE_DIR = Path(os.environ.get("TUNEBUS_LOCAL_DIR", REPO / ".local"))
SERVICES = ("dispatcher", "tuner", "metric_ingestor", "aml_submitter-1")
TICKS = os.sysconf("SC_CLK_TCK")

TRIAL = """import nni
params = nni.get_next_parameter()
nni.report_final_result(params["x"])
"""


def write_experiment(folder: Path, name: str, trials: int, concurrency: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.py").write_text(TRIAL)
    (folder / "search_space.json").write_text(json.dumps({"x": {"_type": "uniform", "_value": [0, 1]}}))
    config = folder / "config.yml"
    config.write_text(
        f"experimentName: {name}\nsearchSpaceFile: search_space.json\ntrialCommand: python3 trial.py\n"
        f"trialCodeDirectory: .\ntrialConcurrency: {concurrency}\nmaxTrialNumber: {trials}\n"
        "maxExperimentDuration: 2h\ntuner:\n  name: Random\ntrainingService:\n  platform: local\n")
    return config


def stack_env() -> dict[str, str]:
    return deploy_local_env()


# ---------------------------------------------------------------- what the processes spent


def _pid(name: str) -> int:
    path = STATE_DIR / "run" / f"{name}.pid"
    if name == "rabbitmq":
        path = next(STATE_DIR.rglob("beam.pid"))
    return int(path.read_text().split()[0])


@dataclass(frozen=True)
class Usage:
    own_cpu: float  # seconds of utime+stime
    children_cpu: float  # reaped children's (a submitter's trials)
    written: int  # bytes written to disk
    read_chars: int  # bytes read by read()-family calls: sockets and files

    @classmethod
    def of(cls, pid: int) -> Usage:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        io = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return cls((utime + stime) / TICKS, (cutime + cstime) / TICKS, int(io["write_bytes"]),
                   int(io["rchar"]))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.own_cpu - other.own_cpu, self.children_cpu - other.children_cpu,
                     self.written - other.written, self.read_chars - other.read_chars)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def measured(names: tuple[str, ...]) -> Iterator[dict[str, dict[str, float]]]:
    """Usage of each named process over the block (filled in when it ends)."""
    pids = {name: _pid(name) for name in names}
    for pid in pids.values():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = {name: Usage.of(pid) for name, pid in pids.items()}
    report: dict[str, dict[str, float]] = {}
    yield report
    for name, pid in pids.items():
        spent = Usage.of(pid) - before[name]
        report[name] = {"cpu_s": spent.own_cpu, "children_cpu_s": spent.children_cpu,
                        "written_bytes": spent.written, "read_chars": spent.read_chars,
                        "peak_rss_mb": _peak_rss_mb(pid)}


# ---------------------------------------------------------------- runs


def _create(config: Path, env: dict[str, str], *, wait: bool, deadline: float) -> dict[str, object]:
    args = [str(TUNEBUS), "create", "--config", str(config), "--json", *(["--wait"] if wait else [])]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=deadline, check=False)
    if result.returncode != 0:
        raise SystemExit(f"tunebus create failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _show(experiment_id: str, env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run([str(TUNEBUS), "experiment", "show", experiment_id, "--json"], env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _per_trial(report: dict[str, dict[str, float]], trials: int) -> dict[str, dict[str, float]]:
    return {name: {key: round(value / trials, 6) if key != "peak_rss_mb" else round(value, 1)
                   for key, value in usage.items()} for name, usage in report.items()}


def _orchestration_ms(report: dict[str, dict[str, float]], trials: int) -> float:
    """The services' own CPU per trial, summed (the trials' processes and the infrastructure apart)."""
    return round(1000 * sum(report[name]["cpu_s"] for name in SERVICES) / trials, 2)


def _stored_sizes(experiment_id: str, env: dict[str, str]) -> dict[str, int]:
    """The experiment's summary size at its end, and Azurite's metadata database's."""
    sys.path.insert(0, str(REPO))
    from shared.blob_rest import BlobRestClient
    from shared.layout import Layout

    with BlobRestClient.from_connection_string(env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                                               env.get("TUNEBUS_STORAGE_CONTAINER", "tunebus")) as client:
        summary = client.get_blob(Layout(experiment_id).state_doc) or b""
    database = STATE_DIR / "azurite-data" / "__azurite_db_blob__.json"
    return {"summary_bytes": len(summary),
            "azurite_db_bytes": database.stat().st_size if database.exists() else 0}


def run_single(trials: int, concurrency: int, env: dict[str, str],
               deadline: float) -> tuple[dict[str, object], list[str]]:
    """The run's numbers, and the experiment it created."""
    with tempfile.TemporaryDirectory() as tmp, measured((*SERVICES, "rabbitmq", "azurite")) as report:
        config = write_experiment(Path(tmp), f"scale-{trials}", trials, concurrency)
        started = time.monotonic()
        summary = _create(config, env, wait=True, deadline=deadline)
        wall = time.monotonic() - started
    if summary["status"] != "DONE" or summary["trials"] != {"SUCCEEDED": trials}:
        raise SystemExit(f"{trials} trials: not DONE with every trial SUCCEEDED: {summary}")
    result = {"mode": "single", "trials": trials, "concurrency": concurrency, "wall_s": round(wall, 2),
              "wall_ms_per_trial": round(1000 * wall / trials, 2),
              "orchestration_cpu_ms_per_trial": _orchestration_ms(report, trials),
              **_stored_sizes(str(summary["id"]), env), "load_avg_1m": os.getloadavg()[0],
              "per_trial": _per_trial(report, trials)}
    return result, [str(summary["id"])]


def run_many(experiments: int, trials: int, concurrency: int, env: dict[str, str],
             deadline: float) -> tuple[dict[str, object], list[str]]:
    """The run's numbers, and the experiments it created."""
    with tempfile.TemporaryDirectory() as tmp, measured((*SERVICES, "rabbitmq", "azurite")) as report:
        started = time.monotonic()
        ids = [str(_create(write_experiment(Path(tmp) / f"e{i}", f"many-{i}", trials, concurrency), env,
                           wait=False, deadline=120)["id"]) for i in range(experiments)]
        finished: dict[str, float] = {}
        while len(finished) < len(ids):
            if time.monotonic() - started > deadline:
                raise SystemExit(f"not all DONE within {deadline} s: {len(finished)}/{len(ids)}")
            for experiment_id in ids:
                if experiment_id not in finished:
                    shown = _show(experiment_id, env)
                    if shown["status"] in ("DONE", "STOPPED", "ERROR"):
                        if shown["status"] != "DONE" or shown["trials"] != {"SUCCEEDED": trials}:
                            raise SystemExit(f"{experiment_id}: {shown}")
                        finished[experiment_id] = time.monotonic() - started
            time.sleep(1.0)
        wall = max(finished.values())
    total = experiments * trials
    ends = sorted(finished.values())
    result = {"mode": "many", "experiments": experiments, "trials_each": trials, "concurrency": concurrency,
              "wall_s": round(wall, 2), "wall_ms_per_trial": round(1000 * wall / total, 2),
              "finish_s": {"first": round(ends[0], 1), "median": round(statistics.median(ends), 1),
                           "last": round(ends[-1], 1)},
              "orchestration_cpu_ms_per_trial": _orchestration_ms(report, total),
              "load_avg_1m": os.getloadavg()[0],
              "per_trial": _per_trial(report, total)}
    return result, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    single = sub.add_parser("single", help="one experiment at each size")
    single.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    single.add_argument("--concurrency", type=int, default=16)
    many = sub.add_parser("many", help="many experiments started together")
    many.add_argument("--experiments", type=int, default=50)
    many.add_argument("--trials", type=int, default=100)
    many.add_argument("--concurrency", type=int, default=4)
    for each in (single, many):
        each.add_argument("--deadline", type=float, default=3600.0)
        each.add_argument("--keep", action="store_true",
                          help="leave the experiments in storage (by default deleted after each run, "
                               "untimed: Azurite slows as its container fills)")
    args = parser.parse_args()
    env = stack_env()
    if args.mode == "single":
        runs = [partial(run_single, trials, args.concurrency, env, args.deadline) for trials in args.trials]
    else:
        runs = [partial(run_many, args.experiments, args.trials, args.concurrency, env, args.deadline)]
    for run in runs:
        result, experiment_ids = run()
        print(json.dumps(result), flush=True)
        if not args.keep:
            delete_experiments(experiment_ids, env)


if __name__ == "__main__":
    main()
