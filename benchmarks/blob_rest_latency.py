"""Per-call latency of the CLI's blob operations: the stdlib REST client against the Azure SDK.

Both talk to the storage of ``TUNEBUS_STORAGE_CONNECTION_STRING`` (Azurite from
``eval "$(deploy/local env)"``), in a container of their own that is deleted afterwards. Each
operation runs ``--calls`` times on one warm client; the median and the 90th percentile are shown.

    .venv/bin/python benchmarks/blob_rest_latency.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from shared.blob_rest import BlobRestClient
from shared.storage import BlobStore

SMALL = b'{"status": "RUNNING"}' * 20
LARGE = os.urandom(1024 * 1024)


def _stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered) * 1000:6.2f} ms  p90 {p90 * 1000:6.2f} ms"


def bench_rest(conn: str, container: str, calls: int) -> dict[str, str]:
    client = BlobRestClient.from_connection_string(conn, container)
    client.ensure_container()
    operations: dict[str, Callable[[], object]] = {
        "put 420 B": lambda: client.put_blob("bench/small.json", SMALL, content_type="application/json"),
        "put 1 MiB": lambda: client.put_blob("bench/large.bin", LARGE),
        "get 420 B": lambda: client.get_blob("bench/small.json"),
        "get missing": lambda: client.get_blob("bench/missing.json"),
        "exists": lambda: client.exists("bench/small.json"),
        "list (2 names)": lambda: client.list_names("bench/"),
    }
    results = {}
    for label, call in operations.items():
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        results[label] = _stats(samples)
    client.close()
    return results


async def bench_sdk(conn: str, container: str, calls: int) -> dict[str, str]:
    store = BlobStore(conn, container)
    await store.ensure_container()

    async def exists() -> bool:
        return bool(await store._container.get_blob_client("bench/small.json").exists())

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "put 420 B": lambda: store.write_bytes("bench/small.json", SMALL, content_type="application/json"),
        "put 1 MiB": lambda: store.write_bytes("bench/large.bin", LARGE),
        "get 420 B": lambda: store.read_bytes("bench/small.json"),
        "get missing": lambda: store.read_bytes("bench/missing.json"),
        "exists": exists,
        "list (2 names)": lambda: store.list("bench/"),
    }
    results = {}
    for label, call in operations.items():
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - started)
        results[label] = _stats(samples)
    await store._container.delete_container()
    await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    conn = os.environ["TUNEBUS_STORAGE_CONNECTION_STRING"]
    container = f"bench-{uuid.uuid4().hex[:12]}"
    rest = bench_rest(conn, container, args.calls)
    sdk = asyncio.run(bench_sdk(conn, container, args.calls))
    print(f"{'operation':<16} {'REST client (stdlib)':<34} azure-storage-blob (aio)")
    for label in rest:
        print(f"{label:<16} {rest[label]:<34} {sdk[label]}")


if __name__ == "__main__":
    main()
