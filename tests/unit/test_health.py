"""The health file is touched only while the service's dependency checks pass."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.health import failing_checks, is_healthy, keep_touching
from tests.conftest import REPO_ROOT


async def _passes() -> None:
    return None


async def _refused() -> None:
    raise ConnectionRefusedError("connection refused")


async def _hangs() -> None:
    await asyncio.sleep(60)


async def test_failing_checks_names_each_failure_and_its_reason() -> None:
    failed = await failing_checks({"broker": _refused, "storage": _passes, "slow": _hangs}, timeout=0.2)
    assert set(failed) == {"broker", "slow"}
    assert "connection refused" in failed["broker"]
    assert "no answer within 0.2 s" in failed["slow"]


async def _touches(path: Path, checks: dict, wait: float = 0.5) -> bool:
    """Whether keep_touching creates ``path`` within ``wait`` seconds with these checks."""
    task = asyncio.create_task(keep_touching(path, interval=0.05, checks=checks, timeout=0.1))
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if path.exists():
                return True
            await asyncio.sleep(0.02)
        return False
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_health_file_not_touched_while_a_dependency_fails(tmp_path: Path) -> None:
    assert not await _touches(tmp_path / "health", {"broker": _refused, "storage": _passes})
    assert not await _touches(tmp_path / "health", {"storage": _hangs})
    assert await _touches(tmp_path / "health", {"broker": _passes, "storage": _passes})
    assert not (tmp_path / "health").exists(), "removed when the service stops"


async def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if condition() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    return condition()


async def test_health_file_goes_stale_while_a_dependency_fails_and_fresh_again(tmp_path: Path) -> None:
    up = asyncio.Event()
    up.set()

    async def broker() -> None:
        if not up.is_set():
            raise ConnectionError("broker gone")

    path = tmp_path / "health"
    task = asyncio.create_task(keep_touching(path, interval=0.05, checks={"broker": broker}, timeout=0.1))
    try:
        assert await _eventually(path.exists)
        up.clear()
        await asyncio.sleep(0.1)  # a round in flight may still touch it
        stale_since = path.stat().st_mtime
        await asyncio.sleep(0.3)
        assert path.stat().st_mtime == stale_since
        assert not is_healthy(path, max_age=0.2)
        up.set()
        assert await _eventually(lambda: is_healthy(path, max_age=0.2))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_health_command_exit_status_follows_the_file_age(tmp_path: Path) -> None:
    path = tmp_path / "health"

    def command() -> int:
        return subprocess.run([sys.executable, "-m", "shared.health", str(path), "--max-age", "15"],
                              cwd=REPO_ROOT, check=False).returncode

    assert command() == 1  # no file
    path.touch()
    assert command() == 0
    old = time.time() - 60
    os.utime(path, (old, old))
    assert command() == 1
