"""Calls into an experiment's tuner and assessor, kept off the event loop and, for users' own
code, bounded in time.

A built-in algorithm is ours and pure: its calls run in the default thread pool, unbounded. A
custom one (``className``) is the user's code: its calls run one after another on a thread of
the experiment's own (user code may expect one thread), each with a time limit. A call that
raises or outlives the limit becomes :class:`AlgorithmFailed`, which ends that experiment in
ERROR; the event loop, and so every other experiment, never waits on it beyond the limit.

A thread cannot be killed in Python: one stuck for good in user code is abandoned (it is a
daemon, so it does not keep the process from exiting) and counted in :func:`abandoned_threads`.
It holds its memory until the tuner restarts; running custom code in its own process is a
later step (issue #16).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shared.secrets_mask import mask_secrets

__all__ = ["AlgorithmCalls", "AlgorithmFailed", "BuiltinCalls", "GuardedCalls", "abandoned_threads",
           "traceback_tail"]

log = logging.getLogger("tunebus.tuner")

T = TypeVar("T")

#: How much of a traceback's end a reason keeps (it is stored in state.json and shown by the CLI).
TRACEBACK_TAIL_CHARS = 2000

_abandoned = 0
_abandoned_lock = threading.Lock()


def abandoned_threads() -> int:
    """Threads left stuck in users' code since the process started."""
    return _abandoned


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


class GuardedCalls(AlgorithmCalls):
    """A user's algorithm: its own daemon thread, one call at a time, ``limit`` seconds each."""

    def __init__(self, name: str, limit: float) -> None:
        self.limit = limit
        self.stuck = False
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None]
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"custom-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)

    async def run(self, what: str, call: Callable[[], T]) -> T:
        if self.stuck:
            raise AlgorithmFailed(f"{what}: not called, an earlier call never returned")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((call, future))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.limit)
        except TimeoutError:
            self._abandon()
            raise AlgorithmFailed(
                f"{what} did not return within {self.limit:g} s (TUNEBUS_CUSTOM_CALL_TIMEOUT); "
                f"its thread is abandoned"
            ) from None
        except Exception as exc:
            raise AlgorithmFailed(f"{what} failed:\n{traceback_tail(exc)}") from exc

    def _abandon(self) -> None:
        global _abandoned
        self.stuck = True
        with _abandoned_lock:
            _abandoned += 1
        log.error("thread %s is stuck in user code; abandoned (%d so far in this process)",
                  self._thread.name, _abandoned)

    def close(self) -> None:
        # The thread ends after the call it is in, if that ever returns.
        self._calls.put(None)
