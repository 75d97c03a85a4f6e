"""The local trial sandbox: what a trial's environment keeps, who it runs as, a non-dumpable submitter,
and a deployment without local trials."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.aml_submitter.service import Submitter, _Experiment
from shared.messages import Message, TrialStatus, TrialStatusChanged, TrialSubmit
from shared.sandbox import Sandbox, SandboxError, TrialUser, _bridge_venv, allowlisted_environment


def test_only_the_allowlist_and_the_named_passthrough_reach_a_trial() -> None:
    submitter_env = {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
        "CUDA_VISIBLE_DEVICES": "0", "HTTPS_PROXY": "http://proxy:3128",
        "AZURE_CLIENT_SECRET": "s3cret", "TUNEBUS_STORAGE_CONNECTION_STRING": "AccountKey=k",
        "TUNEBUS_AMQP_URL": "amqp://u:p@h/", "AWS_SECRET_ACCESS_KEY": "x", "PYTHONPATH": "/evil",
        "LD_PRELOAD": "/evil.so",
    }
    env = allowlisted_environment(submitter_env, ["HTTPS_PROXY", " ", ""])
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
                   "CUDA_VISIBLE_DEVICES": "0", "HTTPS_PROXY": "http://proxy:3128"}


def test_the_submitter_is_non_dumpable_after_start() -> None:
    code = ("import ctypes; from shared.sandbox import make_non_dumpable; "
            "libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0); ok = make_non_dumpable(); "
            "print(before, ok, libc.prctl(3, 0, 0, 0, 0))")  # PR_GET_DUMPABLE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["1", "True", "0"]


def test_root_never_runs_trials_as_root() -> None:
    with pytest.raises(SandboxError, match="does not exist, and trials never run as root"):
        TrialUser.lookup("no-such-user-tunebus")
    with pytest.raises(SandboxError, match="is root"):
        TrialUser.lookup("root")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_root_submitter_runs_trials_as_the_trial_user_with_no_new_privileges() -> None:
    try:
        sandbox = Sandbox.for_this_process()
    except SandboxError as exc:
        pytest.skip(str(exc))
    assert sandbox.user is not None
    out = subprocess.run([*sandbox.prefix(), "/bin/sh", "-c", "id -u; grep NoNewPrivs /proc/self/status"],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    uid, nnp = out.stdout.splitlines()
    assert int(uid) == sandbox.user.uid != 0
    assert nnp.split() == ["NoNewPrivs:", "1"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_trial_user_who_cannot_reach_the_venv_gets_a_bridge_to_its_packages(reachable_dir: Path) -> None:
    sandbox = Sandbox.for_this_process()
    assert sandbox.user is not None
    tmp_path = reachable_dir
    # The venv's interpreter behind a folder only root may pass (as a venv on a pyenv under /root).
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    (private / "bin" / "python3").symlink_to(sys.executable)
    private.chmod(0o700)
    spare = tmp_path / "bridge"
    spare.mkdir()
    tmp_path.chmod(0o755)

    assert not sandbox.can_run(private / "bin" / "python3")
    first_on_path, extra = sandbox.trial_interpreter(private / "bin", spare)
    assert first_on_path == spare / "bin" and extra == []
    # As the trial user, that python is not the venv's yet imports the venv's packages.
    probe = "import sys, pydantic, shared; print(sys.prefix != sys.base_prefix, sys.version_info[:2])"
    out = subprocess.run([*sandbox.prefix(), "/bin/sh", "-c", f'exec python3 -c "{probe}"'],
                         capture_output=True, text=True, check=False, cwd="/",
                         env={"PATH": f"{first_on_path}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(maxsplit=1) == ["True", str(tuple(sys.version_info[:2]))]
    # Where the trial user can run the venv's own interpreter (as it can the bridge's), it is used.
    assert sandbox.trial_interpreter(first_on_path, tmp_path / "unused") == (first_on_path, [])
    assert not (tmp_path / "unused").exists()


class _Bus:
    def __init__(self) -> None:
        self.published: list[Message] = []

    async def publish(self, msg: Message) -> None:
        self.published.append(msg)


async def test_without_local_trials_a_local_trial_fails_saying_why(tmp_path: Path) -> None:
    bus = _Bus()
    submitter = Submitter(bus, store=None, work_dir=tmp_path, replica="r")  # type: ignore[arg-type]
    local = {"trainingService": {"platform": "local"}}
    submitter._experiments["e"] = _Experiment(config=local, code_dir=None, shared_storage=None)
    await submitter.on_submit(TrialSubmit(experiment_id="e", trial_id="t", sequence_id=0, parameters={}))
    [failed] = bus.published
    assert isinstance(failed, TrialStatusChanged) and failed.status == TrialStatus.FAILED
    assert "TUNEBUS_LOCAL_TRIALS=0" in (failed.error or "")




def _bridge_args() -> tuple[Path, str]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Path(sys.executable).resolve(), version


def test_building_a_bridge_again_leaves_the_one_in_use_untouched(tmp_path: Path) -> None:
    # Every worker start asks for the bridge: rebuilding it in place (unlink, then link) left a
    # moment with no interpreter, and a worker started then failed (FileNotFoundError).
    interpreter, version = _bridge_args()
    first = _bridge_venv(tmp_path / "bridge", interpreter, version)
    link = os.lstat(first / "python3")
    assert _bridge_venv(tmp_path / "bridge", interpreter, version) == first
    again = os.lstat(first / "python3")
    assert (again.st_ino, again.st_mtime_ns) == (link.st_ino, link.st_mtime_ns)
    assert (first / "python3").resolve() == interpreter


def test_concurrent_builders_never_show_a_bridge_without_its_interpreter(tmp_path: Path) -> None:
    interpreter, version = _bridge_args()
    folder = tmp_path / "bridge"
    stop = threading.Event()
    missing: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            if folder.exists() and not (folder / "bin" / "python3").exists():
                missing.append("python3")

    def build() -> None:
        for _ in range(15):
            bin_dir = _bridge_venv(folder, interpreter, version)
            if not (bin_dir / "python3").exists() or not (bin_dir.parent / "pyvenv.cfg").exists():
                missing.append(str(bin_dir))

    watcher = threading.Thread(target=watch)
    watcher.start()
    builders = [threading.Thread(target=build) for _ in range(6)]
    for thread in builders:
        thread.start()
    for thread in builders:
        thread.join()
    stop.set()
    watcher.join()
    assert not missing
    assert not list(tmp_path.glob("bridge.*")), "a builder's partial or stale folder was left behind"


def test_a_bridge_to_another_interpreter_replaces_the_old_one(tmp_path: Path) -> None:
    interpreter, version = _bridge_args()
    folder = tmp_path / "bridge"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python3").symlink_to("/nonexistent/python3")  # a bridge from an older install
    bin_dir = _bridge_venv(folder, interpreter, version)
    assert (bin_dir / "python3").resolve() == interpreter
    assert not list(tmp_path.glob("bridge.*"))
