"""A submitter replica's unpacked code folders (services/aml_submitter/code_folders.py): one per
experiment and replica, removed when asked, and the folders of replicas that are gone removed by
the next replica that starts, never those of a replica that runs."""

from __future__ import annotations

import stat
from pathlib import Path

from services.aml_submitter.code_folders import CodeFolders
from shared.code_archive import build_code_archive


def _archive(tmp_path: Path) -> bytes:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True, exist_ok=True)
    (src / "trial.py").write_text("print('hi')\n")
    (src / "pkg" / "util.py").write_text("X = 1\n")
    return build_code_archive(src)


async def test_unpacked_once_then_reused_and_removed(tmp_path: Path) -> None:
    folders = CodeFolders(tmp_path / "work", "replica-a")
    folders.start()
    assert stat.S_IMODE((folders.root / ".alive").stat().st_mode) == 0o600  # no trial can hold it
    code = await folders.unpack("exp1", _archive(tmp_path))
    assert (code / "trial.py").read_text() == "print('hi')\n"
    (code / "marker").write_text("kept")
    assert await folders.unpack("exp1", b"not even an archive") == code  # there already: not unpacked again
    assert (code / "marker").exists()
    assert [p.name for p in folders.root.iterdir() if not p.name.startswith(".")] == ["exp1"]  # no partials
    await folders.remove("exp1")
    assert not code.exists()
    await folders.close()
    assert not folders.root.exists()


async def test_a_folder_left_without_write_permission_is_removed_too(tmp_path: Path) -> None:
    folders = CodeFolders(tmp_path / "work", "replica-a")
    folders.start()
    code = await folders.unpack("exp1", _archive(tmp_path))
    (code / "pkg").chmod(stat.S_IRUSR | stat.S_IXUSR)
    code.chmod(stat.S_IRUSR | stat.S_IXUSR)
    await folders.remove("exp1")
    assert not code.exists()


async def test_a_starting_replica_removes_the_folders_of_replicas_gone_but_not_of_one_running(
        tmp_path: Path) -> None:
    work = tmp_path / "work"
    running = CodeFolders(work, "replica-running")
    running.start()
    kept = await running.unpack("exp1", _archive(tmp_path))
    died = CodeFolders(work, "replica-died")
    died.start()
    lost = await died.unpack("exp2", _archive(tmp_path))
    died._lock.close()  # type: ignore[union-attr]  # as its process dying lets its lock go
    older = work / "code" / "a-folder-of-an-older-version"  # no lock file at all
    older.mkdir()
    new = CodeFolders(work, "replica-new")
    assert new.start() == ["a-folder-of-an-older-version", "replica-died"]
    assert kept.exists() and not lost.exists() and not older.exists()
    for folders in (running, new):
        await folders.close()
