"""The local deployment the benchmarks run on: ``deploy/local up`` and the environment it exports.

Imported by the benchmark scripts by name (a script's own folder is on ``sys.path`` when it runs).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEPLOY_LOCAL = Path(__file__).resolve().parents[1] / "deploy" / "local"


def deploy_local_env(*up_args: str, admin: bool = False) -> dict[str, str]:
    """``deploy/local up *up_args`` (what already runs stays), then this environment with what
    ``deploy/local env`` exports (``--admin``: the operators' account, which may add vhosts)."""
    subprocess.run([str(DEPLOY_LOCAL), "up", *up_args], check=True, stdout=subprocess.DEVNULL)
    exports = subprocess.run([str(DEPLOY_LOCAL), "env", *(["--admin"] if admin else [])], check=True,
                             capture_output=True, text=True).stdout
    env = dict(os.environ)
    for line in exports.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value.strip("'")
    return env


def delete_experiments(experiment_ids: list[str], env: dict[str, str]) -> None:
    """Remove finished runs' blobs (untimed): Azurite slows down as its container fills up (a GET
    takes twice as long with 10,000 other blobs), so a run must not slow the runs after it."""
    import asyncio

    from shared.storage import BlobStore, Layout

    async def delete() -> None:
        conn = env["TUNEBUS_STORAGE_CONNECTION_STRING"]
        async with BlobStore(conn, env.get("TUNEBUS_STORAGE_CONTAINER", "tunebus")) as store:
            for experiment_id in experiment_ids:
                await store.delete_prefix(Layout(experiment_id).root + "/")

    asyncio.run(delete())
