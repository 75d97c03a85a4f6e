"""What running a custom (``className``) tuner in its own worker process costs per call.

Run from the project root::

    .venv/bin/python benchmarks/custom_tuner_latency.py              # 500 calls of each kind
    .venv/bin/python benchmarks/custom_tuner_latency.py --calls 2000

A trivial NNI-style tuner (a subclass of ``nni.tuner.Tuner`` that returns a constant) is driven
the way the tuner service drives it: each ``generate_parameters`` is one
``ProcessCalls.run`` (a hop to the experiment's own thread, one JSON-lines request to the worker
and its reply), each result one ``receive_trial_result``. The same calls into the built-in
``Random`` tuner through ``BuiltinCalls`` (the default thread pool, in process) are the
baseline. Printed: the worker's start-up (spawn, imports, load) and the median and 95th
percentile milliseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.tuner.algorithms import RemoteTuner, create_tuner  # noqa: E402
from services.tuner.calls import AlgorithmCalls, BuiltinCalls, ProcessCalls  # noqa: E402
from services.tuner.custom_process import AlgorithmProcess  # noqa: E402

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}}
TUNER = '''
from nni.tuner import Tuner

class Constant(Tuner):
    def update_search_space(self, search_space):
        self.space = search_space

    def generate_parameters(self, parameter_id, **kwargs):
        return {"x": 0.5}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        pass
'''


async def _timed(calls: int, one: Callable[[int], Awaitable[Any]]) -> list[float]:
    times = []
    for i in range(calls):
        started = time.perf_counter()
        await one(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _summary(name: str, times: list[float]) -> str:
    p95 = statistics.quantiles(times, n=20)[-1]
    return f"{name:<44} median {statistics.median(times):6.3f} ms   p95 {p95:6.3f} ms   ({len(times)} calls)"


async def _measure(label: str, calls: AlgorithmCalls, tuner: Any, count: int) -> None:
    suggest = await _timed(count, lambda i: calls.run(
        "generate_parameters", lambda: tuner.generate_parameters(i)))
    learn = await _timed(count, lambda i: calls.run(
        "receive_trial_result", lambda: tuner.receive_trial_result(i, {"x": 0.5}, 0.1)))
    print(_summary(f"{label}: generate_parameters", suggest))
    print(_summary(f"{label}: receive_trial_result", learn))


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "tuner").mkdir()
        (work / "tuner" / "constant.py").write_text(textwrap.dedent(TUNER))
        process = AlgorithmProcess("bench", work, memory_limit_bytes=2048 * 2**20)
        calls = ProcessCalls("bench", 60.0, process)
        started = time.perf_counter()
        await calls.run("load", lambda: process.request({
            "op": "load", "code_directories": [str(work / "tuner")],
            "algorithms": {"tuner": {"className": "constant.Constant", "searchSpace": SPACE}}}))
        print(f"worker start-up (spawn, imports, load): {(time.perf_counter() - started) * 1000:.0f} ms")
        await _measure("custom tuner in its worker", calls, RemoteTuner(process, "constant.Constant"), count)
        calls.close()
    builtin = create_tuner("Random", {"seed": 1}, SPACE)
    await _measure("built-in Random, in process", BuiltinCalls(), builtin, count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(main(parser.parse_args().calls))
