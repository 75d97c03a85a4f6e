"""Faults injected into the stand-in's 'service' (:func:`inject_fault`), shared by every replica
through a locked list in the run registry."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FAULT_CALLS", "inject_fault", "take_fault"]

FAULT_CALLS = ("submit", "tags", "get", "cancel")


@contextlib.contextmanager
def _faults_file(registry: Path) -> Iterator[Path]:
    """The registry's fault list, locked (replicas in other processes share it)."""
    registry.mkdir(parents=True, exist_ok=True)
    path = registry / "faults.json"
    with (registry / ".faults.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def inject_fault(registry: Path, call: str, status: int = 503, times: int = 1) -> None:
    """Make the next ``times`` calls of ``call`` fail with HTTP ``status`` (a cancel: do nothing).

    ``call``: ``submit`` (before the run exists), ``tags`` (after it exists), ``get`` or ``cancel``.
    """
    if call not in FAULT_CALLS:
        raise ValueError(f"unknown call {call!r}: one of {', '.join(FAULT_CALLS)}")
    with _faults_file(registry) as path:
        faults = json.loads(path.read_text()) if path.exists() else []
        faults += [{"call": call, "status": status}] * times
        _write_json_list(path, faults)


def take_fault(registry: Path, call: str) -> int | None:
    """The status of the next fault injected for ``call`` (and forget it), or None."""
    if not (registry / "faults.json").exists():
        return None
    with _faults_file(registry) as path:
        faults = json.loads(path.read_text()) if path.exists() else []
        for i, fault in enumerate(faults):
            if fault["call"] == call:
                del faults[i]
                _write_json_list(path, faults)
                return int(fault["status"])
    return None


def _write_json_list(path: Path, items: list[Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(items))
    os.replace(tmp, path)
