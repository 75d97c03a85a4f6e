"""Per-call latency and CPU of blob operations: tunebus's two REST clients against the Azure SDK.

- ``stdlib``: :class:`shared.blob_rest.BlobRestClient`, the CLI's synchronous client;
- ``BlobStore``: :class:`shared.storage.BlobStore`, the services' (aiohttp, Shared Key);
- ``SDK``: azure-storage-blob's aio ``ContainerClient``, what the services used before.

All three talk to the storage of ``TUNEBUS_STORAGE_CONNECTION_STRING`` (Azurite from
``eval "$(deploy/local env)"``), in a container of their own that is deleted afterwards. Each
operation runs ``--calls`` times on one warm client; shown are the median and 90th percentile of
the wall time, and this process's CPU per call (what a busy service pays).

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

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient

from shared.blob_rest import BlobRestClient
from shared.storage import BlobStore

SMALL = b'{"status": "RUNNING"}' * 20
LARGE = os.urandom(1024 * 1024)
OPERATIONS = ("put 420 B", "put 1 MiB", "get 420 B", "get missing", "list (2 names)")


def _stats(samples: list[float], cpu: float) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return (f"{statistics.median(ordered) * 1000:5.2f} / {p90 * 1000:5.2f} ms, "
            f"cpu {cpu / len(samples) * 1000:4.2f} ms")


def bench_stdlib(conn: str, container: str, calls: int) -> dict[str, str]:
    client = BlobRestClient.from_connection_string(conn, container)
    client.ensure_container()
    operations: dict[str, Callable[[], object]] = {
        "put 420 B": lambda: client.put_blob("bench/small.json", SMALL, content_type="application/json"),
        "put 1 MiB": lambda: client.put_blob("bench/large.bin", LARGE),
        "get 420 B": lambda: client.get_blob("bench/small.json"),
        "get missing": lambda: client.get_blob("bench/missing.json"),
        "list (2 names)": lambda: client.list_names("bench/"),
    }
    results = {}
    for label, call in operations.items():
        samples = []
        cpu = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        results[label] = _stats(samples, time.process_time() - cpu)
    client.close()
    return results


async def _run(operations: dict[str, Callable[[], Awaitable[object]]], calls: int) -> dict[str, str]:
    results = {}
    for label, call in operations.items():
        samples = []
        cpu = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - started)
        results[label] = _stats(samples, time.process_time() - cpu)
    return results


async def bench_store(conn: str, container: str, calls: int) -> dict[str, str]:
    async with BlobStore(conn, container) as store:
        return await _run({
            "put 420 B": lambda: store.write_bytes("bench/small.json", SMALL,
                                                   content_type="application/json"),
            "put 1 MiB": lambda: store.write_bytes("bench/large.bin", LARGE),
            "get 420 B": lambda: store.read_bytes("bench/small.json"),
            "get missing": lambda: store.read_bytes("bench/missing.json"),
            "list (2 names)": lambda: store.list("bench/"),
        }, calls)


async def bench_sdk(conn: str, container: str, calls: int) -> dict[str, str]:
    json_type = ContentSettings(content_type="application/json")
    async with ContainerClient.from_connection_string(conn, container) as client:
        async def get(name: str) -> bytes | None:
            try:
                return await (await client.download_blob(name)).readall()
            except ResourceNotFoundError:
                return None

        async def names() -> list[str]:
            return [b.name async for b in client.list_blobs(name_starts_with="bench/")]

        results = await _run({
            "put 420 B": lambda: client.upload_blob("bench/small.json", SMALL, overwrite=True,
                                                    content_settings=json_type),
            "put 1 MiB": lambda: client.upload_blob("bench/large.bin", LARGE, overwrite=True),
            "get 420 B": lambda: get("bench/small.json"),
            "get missing": lambda: get("bench/missing.json"),
            "list (2 names)": names,
        }, calls)
        await client.delete_container()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    conn = os.environ["TUNEBUS_STORAGE_CONNECTION_STRING"]
    container = f"bench-{uuid.uuid4().hex[:12]}"
    stdlib = bench_stdlib(conn, container, args.calls)
    store = asyncio.run(bench_store(conn, container, args.calls))
    sdk = asyncio.run(bench_sdk(conn, container, args.calls))
    print(f"median / p90 wall and CPU per call, {args.calls} calls each")
    print(f"{'operation':<16} {'stdlib (CLI)':<30} {'BlobStore (services)':<30} azure-storage-blob (aio)")
    for label in OPERATIONS:
        print(f"{label:<16} {stdlib[label]:<30} {store[label]:<30} {sdk[label]}")


if __name__ == "__main__":
    main()
