"""A custom algorithm's code, from storage into the experiment's folder on this tuner host.

``tunebus create`` packs each custom tuner's or assessor's ``codeDirectory`` and uploads it to
:meth:`shared.layout.Layout.algorithm_code_archive`; the dispatcher records those blob paths
in ``experiment.json`` (``algorithm_code``). Here each is read and unpacked, checked like trial
code (no absolute paths, ``..`` or outside links, bounded size), into ``<folder>/<role>``; the
folder is emptied first, so a rebuilt session never runs a stale copy.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

from shared.code_archive import MAX_ALGORITHM_CODE_BYTES, CodeArchiveError, extract_code_archive
from shared.layout import Layout
from shared.records import ExperimentDocument
from shared.storage import BlobStore

__all__ = ["CustomCodeError", "fetch_algorithm_code"]


class CustomCodeError(Exception):
    """A custom algorithm's stored code cannot be had; the message is the experiment's reason."""


async def fetch_algorithm_code(store: BlobStore, experiment_id: str, doc: ExperimentDocument,
                               roles: Sequence[str], folder: Path) -> None:
    """Unpack the stored code of each of ``roles`` into ``folder/<role>`` (``folder`` is recreated)."""
    archives = doc.algorithm_code
    blobs = {}
    for role in roles:
        class_name = doc.config[role].get("className")
        expected = Layout(experiment_id).algorithm_code_archive(role)
        if archives.get(role) != expected:
            raise CustomCodeError(
                f"custom {role} '{class_name}': no stored code for it (experiment.json names "
                f"{archives.get(role)!r}, expected {expected!r}); create the experiment with tunebus "
                f"create, which uploads the codeDirectory")
        data = await store.read_bytes(expected)
        if data is None:
            raise CustomCodeError(
                f"custom {role} '{class_name}': its code archive {expected} is not in storage")
        blobs[role] = (class_name, data)
    await asyncio.to_thread(_unpack_all, blobs, folder)


def _unpack_all(blobs: dict[str, tuple[str, bytes]], folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for role, (class_name, data) in blobs.items():
        if len(data) > MAX_ALGORITHM_CODE_BYTES:
            raise CustomCodeError(f"custom {role} '{class_name}': its code archive is over "
                                  f"{MAX_ALGORITHM_CODE_BYTES} bytes")
        try:
            extract_code_archive(data, folder / role, max_bytes=MAX_ALGORITHM_CODE_BYTES)
        except CodeArchiveError as exc:
            raise CustomCodeError(
                f"custom {role} '{class_name}': its code archive is refused: {exc}") from None
    folder.mkdir(parents=True, exist_ok=True)
