"""The dashboard at 10,000 trials: API latency and the browser's first paint.

A synthetic experiment of ``--trials`` trials (its state document and experiment.json, as the
dispatcher writes them) goes into a container of its own in the storage of
``TUNEBUS_STORAGE_CONNECTION_STRING`` (Azurite from ``eval "$(deploy/local env)"``); the real
dashboard (``python -m services.dashboard``) serves it, on the broker of ``TUNEBUS_AMQP_URL``.

- API: the first read after a change of the state document (read and parsed again), then the
  median and 90th percentile of ``--calls`` warm calls of each endpoint, and of a conditional
  re-read that finds nothing changed (the live pages' poll);
- browser (Debian's chromium, headless): first contentful paint, and the time until the trials
  table is filled and until the metric plot is drawn, from navigation start.

    .venv/bin/python benchmarks/dashboard.py [--trials 10000] [--calls 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from shared.settings import CommonSettings
from shared.storage import BlobStore, Layout
from tests.dashboard.data import store_experiment, synthetic_state

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "benchmark-token-0123456789abcdef"
EXPERIMENT = "bench-10k"
ENDPOINTS = {
    "overview": "",
    "trials page 1 (50)": "/trials?limit=50",
    "trials sorted by final, desc": "/trials?sort=-final&limit=50",
    "trials, status filter + search": "/trials?status=SUCCEEDED&q=%22layers%22:4&limit=50",
    "trials, last page": "/trials?offset=9950&limit=50",
    "metric scatter (down-sampled)": "/metric",
    "parallel coordinates, top 10 %": "/parameters?top=10",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"{statistics.median(ordered) * 1000:7.1f} / {ordered[int(len(ordered) * 0.9)] * 1000:7.1f} ms"


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the dashboard exited {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit(f"the dashboard did not listen on {port} within {timeout} s")


async def _timed(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
                 ) -> tuple[float, int, str]:
    started = time.perf_counter()
    async with session.get(url, headers=headers) as response:
        await response.read()
        return time.perf_counter() - started, response.status, response.headers.get("ETag", "")


async def bench_api(base: str, store: BlobStore, state_bytes: bytes, calls: int) -> None:
    api = f"{base}/api/experiments/{EXPERIMENT}"
    async with aiohttp.ClientSession() as session:
        cold: list[float] = []
        for _ in range(3):  # a changed state document: read and parsed again by the next request
            await store.write_document(Layout(EXPERIMENT).state_doc, state_bytes)
            await asyncio.sleep(0.6)  # past the dashboard's refresh interval
            cold.append((await _timed(session, api + "/trials?limit=50"))[0])
        print(f"  {'first read after a change (parse)':34s} {_ms(cold)}")
        for label, path in ENDPOINTS.items():
            samples = [(await _timed(session, api + path))[0] for _ in range(calls)]
            print(f"  {label:34s} {_ms(samples)}")
        _, _, etag = await _timed(session, api)
        polls = []
        for _ in range(calls):
            elapsed, status, _ = await _timed(session, api, {"If-None-Match": etag})
            assert status == 304, status
            polls.append(elapsed)
            await asyncio.sleep(0.02)
        print(f"  {'live poll, unchanged (304)':34s} {_ms(polls)}")


async def bench_browser(base: str, runs: int) -> None:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        print("  (no chromium: apt-get install chromium)")
        return
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 1360, "height": 900})
        page = await context.new_page()
        await page.goto(f"{base}/?token={TOKEN}")
        results: dict[str, list[float]] = {"first contentful paint": [], "trials table filled": [],
                                           "metric plot drawn": []}
        for _ in range(runs):
            # A fresh document each time (a hash change alone would not load the page again);
            # plotly.js comes from the browser's cache after the first load, as for a user.
            await page.goto("about:blank")
            await page.goto(f"{base}/experiments/{EXPERIMENT}#trials", wait_until="commit")
            await page.wait_for_selector("#trials-table tbody tr[data-trial]")
            results["trials table filled"].append(await page.evaluate("performance.now()") / 1000)
            fcp = await page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1")
            results["first contentful paint"].append(fcp / 1000)
            await page.goto("about:blank")
            await page.goto(f"{base}/experiments/{EXPERIMENT}#overview", wait_until="commit")
            await page.wait_for_function("document.querySelectorAll('#plot-metric .point').length > 0")
            results["metric plot drawn"].append(await page.evaluate("performance.now()") / 1000)
        for label, samples in results.items():
            print(f"  {label:34s} {_ms(samples)}")
        await browser.close()


def _start_dashboard(container: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TUNEBUS_STORAGE_CONTAINER": container, "TUNEBUS_DASHBOARD_PORT": str(port),
           "TUNEBUS_DASHBOARD_TOKEN": TOKEN, "TUNEBUS_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "services.dashboard"], env=env, cwd=REPO_ROOT)


async def main_async(args: argparse.Namespace) -> None:
    settings = CommonSettings()
    container = f"bench-dashboard-{uuid.uuid4().hex[:8]}"
    store = BlobStore(settings.storage_connection_string, container)
    await store.ensure_container()
    port = _free_port()
    proc = _start_dashboard(container, port)
    try:
        state = synthetic_state(EXPERIMENT, args.trials, running=20)
        await store_experiment(store, state)
        state_bytes = state.model_dump_json().encode()
        print(f"dashboard, {args.trials} trials (state document {len(state_bytes) / 1e6:.1f} MB); "
              f"median / 90th percentile of {args.calls} calls")
        await _wait_listening(port, proc)
        await bench_api(f"http://127.0.0.1:{port}", store, state_bytes, args.calls)
        print(f"browser (headless chromium, {args.runs} loads each)")
        await bench_browser(f"http://127.0.0.1:{port}", args.runs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        await store.delete_prefix("")
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
