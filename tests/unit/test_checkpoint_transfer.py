"""PBT's checkpoints between the experiment's storage and a local trial's folders (the submitter's side)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.aml_submitter.backend import JobRequest, PermanentSubmitError
from services.aml_submitter.checkpoints import CheckpointError, CheckpointTransfer
from services.aml_submitter.trial_env import TrialIdentity


class MemoryStore:
    """The four storage operations the transfer uses, over a dict."""

    def __init__(self, blobs: dict[str, bytes] | None = None) -> None:
        self.blobs = dict(blobs or {})

    async def list(self, prefix: str) -> list[str]:
        return sorted(name for name in self.blobs if name.startswith(prefix))

    async def read_bytes(self, path: str) -> bytes | None:
        return self.blobs.get(path)

    async def delete_prefix(self, prefix: str) -> None:
        for name in await self.list(prefix):
            del self.blobs[name]

    async def upload_file_tail(self, path: str, file: Path, *, max_bytes: int) -> int:
        self.blobs[path] = file.read_bytes()
        return 0


def job(load: str = "tunebus-checkpoints/1/2", save: str = "tunebus-checkpoints/0/3") -> JobRequest:
    who = TrialIdentity(experiment_id="e1", trial_id="t1", sequence_id=7, attempt=1)
    parameters = {"lr": 0.1, "load_checkpoint_dir": load, "save_checkpoint_dir": save}
    return JobRequest(who=who, parameters=parameters,
                      config={"tuner": {"name": "PBT"}}, code_dir=None, metrics_url="http://x")


async def test_local_folders_are_filled_from_storage_and_the_save_goes_back(tmp_path: Path) -> None:
    store = MemoryStore({"experiments/e1/checkpoints/1/2/model.pt": b"weights",
                         "experiments/e1/checkpoints/1/2/opt/state.bin": b"adam",
                         "experiments/e1/checkpoints/1/20/other": b"not this one",
                         "experiments/e1/checkpoints/0/3/stale": b"from a failed attempt"})
    transfer = CheckpointTransfer(store)
    folders, parameters = await transfer.prepare(job(), tmp_path)
    assert parameters == {"lr": 0.1, "load_checkpoint_dir": str(tmp_path / "checkpoint-load"),
                          "save_checkpoint_dir": str(tmp_path / "checkpoint-save")}
    assert (folders.load_dir / "model.pt").read_bytes() == b"weights"
    assert (folders.load_dir / "opt" / "state.bin").read_bytes() == b"adam"
    assert sorted(p.name for p in folders.load_dir.iterdir()) == ["model.pt", "opt"]
    assert list(folders.save_dir.iterdir()) == []

    (folders.save_dir / "nested").mkdir()
    (folders.save_dir / "nested" / "model.pt").write_bytes(b"new weights")
    assert await transfer.save(folders) == 1
    assert await store.list("experiments/e1/checkpoints/0/3/") == \
        ["experiments/e1/checkpoints/0/3/nested/model.pt"]
    assert store.blobs["experiments/e1/checkpoints/0/3/nested/model.pt"] == b"new weights"


@pytest.mark.parametrize("plant", ["file_link", "dir_link", "fifo"])
async def test_a_save_folder_with_links_or_special_files_is_refused(tmp_path: Path, plant: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's")
    store = MemoryStore()
    transfer = CheckpointTransfer(store)
    folders, _ = await transfer.prepare(job(), tmp_path)
    target = folders.save_dir / "model.pt"
    if plant == "file_link":
        target.symlink_to(secret)
    elif plant == "dir_link":
        (folders.save_dir / "sub").symlink_to(tmp_path)
    else:
        os.mkfifo(target)
    with pytest.raises(CheckpointError, match="not a regular file"):
        await transfer.save(folders)
    assert store.blobs == {}


async def test_a_replaced_save_folder_and_bad_names_are_refused(tmp_path: Path) -> None:
    transfer = CheckpointTransfer(MemoryStore())
    folders, _ = await transfer.prepare(job(), tmp_path)
    (folders.save_dir / "bad\nname").write_text("x")
    with pytest.raises(CheckpointError, match="file name tunebus does not store"):
        await transfer.save(folders)
    os.unlink(folders.save_dir / "bad\nname")
    folders.save_dir.rmdir()
    folders.save_dir.symlink_to(tmp_path)
    with pytest.raises(CheckpointError, match="not a folder any more"):
        await transfer.save(folders)


@pytest.mark.parametrize(("load", "save"),
                         [("tunebus-checkpoints/1/2", "/etc"), ("../x", "tunebus-checkpoints/0/0")])
async def test_parameters_must_name_checkpoints_by_reference(tmp_path: Path, load: str, save: str) -> None:
    with pytest.raises(PermanentSubmitError, match="tunebus-checkpoints/<member>/<step>"):
        await CheckpointTransfer(MemoryStore()).prepare(job(load, save), tmp_path)
