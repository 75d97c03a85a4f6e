"""How Azurite's cost per request grows with the blobs it holds (why 10,000 trials bend on it).

Drives a private Azurite (the one ``deploy/local`` installed, on its own port) with the requests
of one tunebus trial, over and over, the way the services make them: a claim and a results blob
written, the experiment's summary read and written again (with its ETag), one record appended to
the ended-trial log (an append blob per 200 trials). Every ``--every`` trials it prints the wall
time and Azurite's CPU per trial and its RSS. No tunebus service runs: what grows here is the
emulator's own cost, since every trial leaves two blobs behind (Azure Blob Storage's cost per
request does not depend on how many blobs a container holds).

    .venv/bin/python benchmarks/azurite_growth.py [--trials 10000] [--every 500] [--in-memory]

Bounded: stops at ``--deadline`` seconds (default 1800); Azurite is stopped however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.storage import BlobStore  # noqa: E402

LOCAL_DIR = Path(os.environ.get("TUNEBUS_LOCAL_DIR", REPO / ".local"))
AZURITE = LOCAL_DIR / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's published development account (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


async def drive(port: int, pid: int, trials: int, every: int, deadline: float) -> list[dict[str, float]]:
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    rows = []
    async with BlobStore(conn, "growth") as store:
        await store.ensure_container()
        summary = {"counts": {}, "active": [], "pad": "x" * 1000}  # ~ a summary's size
        await store.write_json("e/state.json", summary)
        started, cpu, worst = time.monotonic(), cpu_seconds(pid), 0.0
        for i in range(trials):
            if time.monotonic() > deadline:
                raise SystemExit(f"past the deadline at trial {i}")
            begun = time.monotonic()
            await store.write_json(f"e/trials/{i:06d}/claims/1.json", {"replica": "r", "state": "started"})
            await store.write_bytes(f"e/trials/{i:06d}/results.jsonl", b'{"type":"final","value":0.5}\n')
            found = await store.read_json("e/state.json")
            await store.write_json("e/state.json", summary, etag=found[1] if found else None)
            chunk = f"e/trials-ended/{i // 200:06d}.jsonl"
            if i % 200 == 0:
                await store.create_append_blob(chunk)
            await store.append_block(chunk, b"r" * 300 + b"\n")
            worst = max(worst, time.monotonic() - begun)
            if (i + 1) % every == 0:
                now, used = time.monotonic(), cpu_seconds(pid)
                row = {"trials": i + 1, "wall_ms_per_trial": round(1000 * (now - started) / every, 1),
                       "azurite_cpu_ms_per_trial": round(1000 * (used - cpu) / every, 1),
                       "worst_trial_ms": round(1000 * worst), "azurite_rss_mb": rss_mb(pid)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                started, cpu, worst = now, used, 0.0
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--in-memory", action="store_true", help="Azurite's --inMemoryPersistence")
    parser.add_argument("--port", type=int, default=21100)
    parser.add_argument("--deadline", type=float, default=1800.0)
    args = parser.parse_args()
    if not AZURITE.exists():
        raise SystemExit(f"no Azurite at {AZURITE}: run deploy/local up once (it installs it)")
    with tempfile.TemporaryDirectory(prefix="azurite-growth-") as data:
        command = [str(AZURITE), "--blobPort", str(args.port), "--skipApiVersionCheck", "--disableTelemetry"]
        command += ["--inMemoryPersistence"] if args.in_memory else ["--location", data]
        azurite = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that Azurite is stopped below
        try:
            time.sleep(3)
            rows = asyncio.run(drive(args.port, azurite.pid, args.trials, args.every,
                                     time.monotonic() + args.deadline))
            first, last = rows[0], rows[-1]
            print(json.dumps({"in_memory": args.in_memory, "first": first, "last": last,
                              "growth": round(last["azurite_cpu_ms_per_trial"]
                                              / max(first["azurite_cpu_ms_per_trial"], 0.1), 2)}))
        finally:
            os.killpg(azurite.pid, signal.SIGKILL)
            azurite.wait()


if __name__ == "__main__":
    main()
