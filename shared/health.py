"""Health through a file: a service touches it while it can do its work; ``python -m shared.health
FILE`` exits 0 when the file was touched within the last ``--max-age`` seconds (the compose and
image healthchecks, ``deploy/local status``).

"Can do its work" is more than "the process is alive": before each touch the service runs its
checks (the broker answers on its connection, the blob container answers), each bounded by a
timeout. While one fails the file is not touched, so it goes stale and the container turns
unhealthy; the first passing round touches it again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

__all__ = [
    "CHECK_TIMEOUT",
    "HEALTH_INTERVAL",
    "HealthCheck",
    "failing_checks",
    "is_healthy",
    "keep_touching",
    "main",
]

HEALTH_INTERVAL = 3.0
#: Seconds one check may take before it counts as failed (a broker that does not answer).
CHECK_TIMEOUT = 5.0

#: A dependency check: returns when the dependency answered, raises when it did not.
HealthCheck = Callable[[], Awaitable[None]]

log = logging.getLogger("tunebus.health")


def is_healthy(path: str | Path, max_age: float = 15.0) -> bool:
    """True when ``path`` exists and was touched within ``max_age`` seconds."""
    try:
        return time.time() - os.stat(path).st_mtime <= max_age
    except FileNotFoundError:
        return False


async def _run_check(check: HealthCheck, timeout: float) -> str | None:
    """None when ``check`` passed within ``timeout``; otherwise why not."""
    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except Exception as exc:  # any failure of a dependency is a health finding, not a crash
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


async def failing_checks(checks: Mapping[str, HealthCheck], timeout: float = CHECK_TIMEOUT) -> dict[str, str]:
    """The checks that failed, run side by side: ``{name: why}``; empty when all passed."""
    names = list(checks)
    results = await asyncio.gather(*(_run_check(checks[name], timeout) for name in names))
    return {name: why for name, why in zip(names, results, strict=True) if why is not None}


async def keep_touching(path: str | Path, interval: float = HEALTH_INTERVAL,
                        checks: Mapping[str, HealthCheck] | None = None,
                        timeout: float = CHECK_TIMEOUT) -> None:
    """Every ``interval`` seconds, run ``checks`` and touch ``path`` if all passed, until
    cancelled; remove the file when cancelled. A change between healthy and not is logged once."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    reported: dict[str, str] = {}
    try:
        while True:
            failed = await failing_checks(checks or {}, timeout)
            if not failed:
                file.touch()
                if reported:
                    log.info("healthy again: %s answer", ", ".join(sorted(reported)))
            elif failed.keys() != reported.keys():
                log.warning("unhealthy (health file not touched): %s",
                            "; ".join(f"{name}: {why}" for name, why in sorted(failed.items())))
            reported = failed
            await asyncio.sleep(interval)
    finally:
        file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file")
    parser.add_argument("--max-age", type=float, default=15.0)
    args = parser.parse_args(argv)
    return 0 if is_healthy(args.file, args.max_age) else 1


if __name__ == "__main__":
    sys.exit(main())
