"""PBT's checkpoints kept in the experiment's storage, handed to local trials as folders.

When tunebus keeps an experiment's checkpoints (:mod:`shared.checkpoints`), the tuner names them in
a trial's parameters as references (``tunebus-checkpoints/<member>/<step>``). Before the trial
starts, :meth:`CheckpointTransfer.prepare` downloads the one to load into a folder of the trial's
own and gives the trial the local paths instead (``load_checkpoint_dir``, and an empty
``save_checkpoint_dir``), as NNI's trial code expects folders. Once the trial has succeeded,
:meth:`CheckpointTransfer.save` uploads what it left in its save folder, before its end is
reported, so the next step never starts without it.

The save folder is the trial's (hostile) work: it is walked without following links (each entry
opened relative to its folder with ``O_NOFOLLOW``, checked to be a regular file or a folder on the
open descriptor), names are checked, and the files and bytes are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.checkpoints import LOAD_KEY, SAVE_KEY, parse_checkpoint_ref
from shared.layout import Layout

from .backend import JobRequest, PermanentSubmitError

__all__ = ["CheckpointError", "CheckpointFolders", "CheckpointStore", "CheckpointTransfer"]

MAX_CHECKPOINT_FILES = 10_000
MAX_CHECKPOINT_BYTES = 32 * 2**30
MAX_NAME_CHARS = 255
MAX_DEPTH = 32
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a planted FIFO must not hang us


class CheckpointError(Exception):
    """A trial's checkpoint cannot be saved (too big, a bad name); the message says why."""


class CheckpointStore(Protocol):
    """The storage operations used here (:class:`shared.storage.BlobStore`)."""

    async def list(self, prefix: str) -> list[str]: ...
    async def read_bytes(self, path: str) -> bytes | None: ...
    async def delete_prefix(self, prefix: str) -> None: ...
    async def upload_file_tail(self, path: str, file: Path, *, max_bytes: int) -> int: ...


@dataclass(frozen=True)
class CheckpointFolders:
    """A trial's two checkpoint folders and where its saved checkpoint goes in storage."""

    load_dir: Path
    save_dir: Path
    save_prefix: str


class CheckpointTransfer:
    """Moves checkpoints between the experiment's storage and trials' folders (local backend)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    async def prepare(self, job: JobRequest, output_dir: Path) -> tuple[CheckpointFolders, dict[str, Any]]:
        """Fill ``output_dir/checkpoint-load`` from storage and make an empty ``checkpoint-save``;
        returns them and the parameters the trial gets (their local paths in place of references).

        Call it while ``output_dir`` is still the submitter's (before it is handed to the trial user).
        """
        load, save = (parse_checkpoint_ref(job.parameters.get(key)) for key in (LOAD_KEY, SAVE_KEY))
        if load is None or save is None:
            raise PermanentSubmitError(f"PBT trial parameters must name checkpoints as tunebus-checkpoints/"
                                       f"<member>/<step> in {LOAD_KEY} and {SAVE_KEY}")
        layout = Layout(job.who.experiment_id)
        folders = CheckpointFolders(output_dir / "checkpoint-load", output_dir / "checkpoint-save",
                                    layout.checkpoint_prefix(*save))
        for folder in (folders.load_dir, folders.save_dir):
            folder.mkdir(mode=0o755)
        await self._download(layout.checkpoint_prefix(*load), folders.load_dir)
        parameters = {**job.parameters, LOAD_KEY: str(folders.load_dir), SAVE_KEY: str(folders.save_dir)}
        return folders, parameters

    async def _download(self, prefix: str, folder: Path) -> None:
        names = await self.store.list(prefix)
        if len(names) > MAX_CHECKPOINT_FILES:
            raise PermanentSubmitError(f"the checkpoint {prefix} has {len(names)} files, over "
                                       f"{MAX_CHECKPOINT_FILES}")
        total = 0
        for name in names:
            parts = name[len(prefix):].split("/")
            if not all(_good_name(part) for part in parts) or len(parts) > MAX_DEPTH:
                raise PermanentSubmitError(f"the checkpoint blob {name!r} has a name no folder can hold")
            data = await self.store.read_bytes(name)
            if data is None:
                continue  # deleted since the listing (a save being redone): skip it
            total += len(data)
            if total > MAX_CHECKPOINT_BYTES:
                raise PermanentSubmitError(f"the checkpoint {prefix} is over {MAX_CHECKPOINT_BYTES} bytes")
            target = folder.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            await asyncio.to_thread(target.write_bytes, data)

    async def save(self, folders: CheckpointFolders) -> int:
        """Upload the trial's save folder to its prefix (replacing what an earlier attempt left);
        returns the number of files. Raises :class:`CheckpointError` for a folder it must refuse."""
        with _open_tree(folders.save_dir) as files:
            await self.store.delete_prefix(folders.save_prefix)
            for relative, fd in files:
                # The open descriptor is what is uploaded: its /proc path names that very file,
                # whatever the trial's processes rename or swap in the folder meanwhile.
                await self.store.upload_file_tail(folders.save_prefix + relative, Path(f"/proc/self/fd/{fd}"),
                                                  max_bytes=MAX_CHECKPOINT_BYTES)
            return len(files)


@contextlib.contextmanager
def _open_tree(root: Path) -> Iterator[list[tuple[str, int]]]:
    """Every regular file under ``root`` as (relative name, open descriptor), links never followed."""
    files: list[tuple[str, int]] = []
    try:
        try:
            root_fd = os.open(root, _OPEN_DIR)
        except OSError as exc:
            raise CheckpointError(f"its save_checkpoint_dir is not a folder any more "
                                  f"({exc.strerror})") from exc
        _collect(root_fd, "", 0, files, [0])
        yield files
    finally:
        for _, fd in files:
            os.close(fd)


def _collect(dir_fd: int, prefix: str, depth: int, files: list[tuple[str, int]], total: list[int]) -> None:
    try:
        if depth > MAX_DEPTH:
            raise CheckpointError(f"its checkpoint folders are nested over {MAX_DEPTH} deep")
        for name in sorted(os.listdir(dir_fd)):
            if not _good_name(name):
                raise CheckpointError(f"its checkpoint has a file name tunebus does not store: {name[:80]!r}")
            try:
                fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
            except OSError as exc:  # ELOOP: a link
                raise CheckpointError(f"its checkpoint has {prefix + name!r}, which is not a regular file "
                                      f"or folder ({exc.strerror})") from exc
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                try:
                    _collect(fd, f"{prefix}{name}/", depth + 1, files, total)
                finally:
                    os.close(fd)
                continue
            if not stat.S_ISREG(mode):
                os.close(fd)
                raise CheckpointError(f"its checkpoint has {prefix + name!r}, which is not a regular file")
            files.append((prefix + name, fd))
            total[0] += os.fstat(fd).st_size
            if len(files) > MAX_CHECKPOINT_FILES or total[0] > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"its checkpoint is over {MAX_CHECKPOINT_FILES} files or "
                                      f"{MAX_CHECKPOINT_BYTES} bytes")
    finally:
        if depth == 0:
            os.close(dir_fd)


def _good_name(name: str) -> bool:
    """A file or folder name that is the same as a blob name segment and back."""
    return (0 < len(name) <= MAX_NAME_CHARS and name not in (".", "..") and "/" not in name
            and "\\" not in name and name.isprintable())
