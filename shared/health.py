"""Liveness through a file: a service touches it while healthy; ``python -m shared.health FILE``
exits 0 when the file was touched within the last ``--max-age`` seconds (compose healthchecks)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

__all__ = ["HEALTH_INTERVAL", "is_healthy", "keep_touching"]

HEALTH_INTERVAL = 3.0


def is_healthy(path: str | Path, max_age: float = 15.0) -> bool:
    """True when ``path`` exists and was touched within ``max_age`` seconds."""
    try:
        return time.time() - os.stat(path).st_mtime <= max_age
    except FileNotFoundError:
        return False


async def keep_touching(path: str | Path, interval: float = HEALTH_INTERVAL) -> None:
    """Touch ``path`` every ``interval`` seconds until cancelled; remove it when cancelled."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        while True:
            file.touch()
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
