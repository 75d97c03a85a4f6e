"""Calls into an experiment's tuner and assessor, kept off the event loop and, for users' own
code, bounded in time and isolated in a process.

A built-in algorithm is ours and pure: its calls run in the default thread pool, unbounded. A
custom one (``className``) is the user's code: it lives in a worker process of the experiment's
own (:mod:`services.tuner.custom_process`, with a memory limit), and the experiment's calls run
one after another on a thread of its own, each within a time limit. A call that raises, outlives
the limit or finds the worker dead becomes :class:`AlgorithmFailed`, which ends that experiment
in ERROR; the worker is killed, so nothing of it lingers, and no other experiment waits on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shared.secrets_mask import mask_secrets

from .custom_process import AlgorithmProcess, CallTimedOut, RemoteError, WorkerFailed

__all__ = ["AlgorithmCalls", "AlgorithmFailed", "BuiltinCalls", "ProcessCalls", "traceback_tail"]

log = logging.getLogger("tunebus.tuner")

T = TypeVar("T")

#: How much of a traceback's end a reason keeps (it is stored in state.json and shown by the CLI).
TRACEBACK_TAIL_CHARS = 2000

# Frames of tunebus itself and of the machinery between it and the user's code say nothing to
# the user: a reason shows the user's frames and the error.
_OWN_CODE = tuple(str(path) for path in (
    Path(__file__).resolve().parent, Path(__file__).resolve().parents[2] / "shared",
    Path(asyncio.__file__).resolve().parent, Path(concurrent.futures.__file__).resolve().parent,
    Path(threading.__file__).resolve(),
))


def traceback_tail(exc: BaseException, limit: int = TRACEBACK_TAIL_CHARS) -> str:
    """The end of ``exc``'s traceback (the user's frames and the error), secrets masked."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if not str(Path(frame.filename).resolve()).startswith(_OWN_CODE)]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    text = "".join([*lines, *traceback.format_exception_only(exc)]).rstrip()
    if len(text) > limit:
        text = "..." + text[-limit:].split("\n", 1)[-1]
    return mask_secrets(text)


class AlgorithmFailed(Exception):
    """A call into a tuner or assessor raised or ran past its limit; ``reason`` is for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AlgorithmCalls(ABC):
    """Runs an experiment's algorithm calls; :meth:`run` raises :class:`AlgorithmFailed`."""

    @abstractmethod
    async def run(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` as this kind of algorithm is run: its result, or AlgorithmFailed."""

    def close(self) -> None:  # noqa: B027 - most kinds hold nothing to release
        """Release what the calls hold (nothing, unless a thread of their own)."""


class BuiltinCalls(AlgorithmCalls):
    """Built-in algorithms: in the default thread pool, no time limit."""

    async def run(self, what: str, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except Exception as exc:
            raise AlgorithmFailed(f"{what} failed:\n{traceback_tail(exc)}") from exc


class ProcessCalls(AlgorithmCalls):
    """An experiment with a user's algorithm: its calls on a thread of their own, one at a time,
    the user's code in :attr:`process` (a worker process), each call ``limit`` seconds at most.

    The limit is the worker's deadline for every request the call makes (a call may make
    several: one suggestion per id), so a call returns or fails within it: a worker that
    hangs or dies is killed, never abandoned, and takes its memory with it.
    """

    def __init__(self, name: str, limit: float, process: AlgorithmProcess) -> None:
        self.limit = limit
        self.process = process
        self._ended: str | None = None
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None]
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"custom-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            self.process.deadline = time.monotonic() + self.limit
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)
        self.process.kill()

    async def run(self, what: str, call: Callable[[], T]) -> T:
        if self._ended is not None:
            raise AlgorithmFailed(f"{what}: not called, {self._ended}")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((call, future))
        try:
            return await asyncio.wrap_future(future)  # bounded: every wait inside has the deadline
        except CallTimedOut:
            self._ended = "an earlier call did not return in time"
            raise AlgorithmFailed(
                f"{what} did not return within {self.limit:g} s (TUNEBUS_CUSTOM_CALL_TIMEOUT); "
                f"its process was ended"
            ) from None
        except WorkerFailed as exc:
            self._ended = str(exc)
            raise AlgorithmFailed(f"{what} failed: {exc}") from None
        except RemoteError as exc:
            hint = ""
            if exc.tail.rstrip().endswith("MemoryError") and self.process.memory_limit_bytes:
                hint = (f"\n(the worker's memory limit is {self.process.memory_limit_bytes // 2**20} MiB: "
                        f"TUNEBUS_CUSTOM_MEMORY_LIMIT_MB)")
            raise AlgorithmFailed(f"{what} failed:\n{mask_secrets(exc.tail)}{hint}") from exc
        except Exception as exc:
            raise AlgorithmFailed(f"{what} failed:\n{traceback_tail(exc)}") from exc

    def close(self) -> None:
        # The thread kills the worker once the call it is in (bounded by the deadline) is over.
        self._calls.put(None)
