"""Each experiment's code, unpacked once per submitter replica, and removed when no longer needed.

A replica unpacks an experiment's code archive the first time one of its trials comes and keeps
the folder while it keeps the experiment loaded (the submitter's least-recently-used cache):
when the experiment leaves the cache and none of its trials runs here, the folder goes. Replicas
on one machine share the work folder, so each has a folder of its own
(``<work>/code/<replica>/<experiment>``) and holds a lock on ``<work>/code/<replica>/.alive``
while it runs; a replica that starts removes the folders of those whose lock nobody holds (they
died, or stopped, without cleaning up).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from shared.code_archive import extract_code_archive

__all__ = ["CodeFolders", "remove_tree"]

log = logging.getLogger("tunebus.submitter")

LOCK_NAME = ".alive"


def remove_tree(folder: Path) -> None:
    """``rm -rf folder``, also through folders an archive left without write permission."""
    def writable_and_retry(function: Callable[..., Any], path: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
            function(path)

    if folder.exists():
        shutil.rmtree(folder, onerror=writable_and_retry)  # onexc from 3.12


class CodeFolders:
    """This replica's unpacked code folders, one per experiment."""

    def __init__(self, work_dir: Path, replica: str) -> None:
        self.parent = work_dir / "code"
        self.root = self.parent / replica
        self._lock: IO[bytes] | None = None

    def start(self) -> list[str]:
        """Take this replica's lock; remove the folders of replicas that are gone (their names)."""
        self.root.mkdir(parents=True, exist_ok=True)
        # Private (0600): a trial, which may read the code, must not be able to hold the lock.
        self._lock = os.fdopen(os.open(self.root / LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o600), "wb")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        gone = []
        for folder in sorted(self.parent.iterdir()):
            if folder == self.root or not folder.is_dir():
                continue
            if self._owner_gone(folder):
                remove_tree(folder)
                gone.append(folder.name)
        if gone:
            log.info("removed the code folders of %d submitter replicas that are gone", len(gone))
        return gone

    @staticmethod
    def _owner_gone(folder: Path) -> bool:
        try:
            with open(folder / LOCK_NAME, "ab") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # its replica runs
                return True
        except OSError:  # no lock file: a folder of an older version, or half made
            return True

    async def close(self) -> None:
        """Remove all of this replica's folders and let its lock go."""
        await asyncio.to_thread(remove_tree, self.root)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def folder(self, experiment_id: str) -> Path:
        return self.root / experiment_id

    async def unpack(self, experiment_id: str, data: bytes) -> Path:
        """The experiment's code folder, unpacked from ``data`` unless it is there already."""
        dest = self.folder(experiment_id)
        if dest.exists():
            return dest
        partial = self.root / f".{experiment_id}.{uuid.uuid4().hex}.partial"
        try:
            await asyncio.to_thread(extract_code_archive, data, partial)
            try:
                partial.rename(dest)  # whole or not at all
            except OSError:
                if not dest.is_dir():  # not merely unpacked meanwhile
                    raise
        finally:
            await asyncio.to_thread(remove_tree, partial)
        return dest

    async def remove(self, experiment_id: str) -> None:
        await asyncio.to_thread(remove_tree, self.folder(experiment_id))
