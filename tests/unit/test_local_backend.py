"""The local backend: real processes, exit as an event, kill, stderr tail, dying with the parent."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.aml_submitter.backend import JobRequest
from services.aml_submitter.gpus import GpuAllocator
from services.aml_submitter.local import LocalBackend
from services.aml_submitter.trial_env import TrialIdentity
from shared.messages import TrialStatus, TrialStatusChanged

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmp_path(reachable_dir: Path) -> Path:
    """pytest's tmp_path, but where the unprivileged trial user can reach it (a root submitter
    runs trials as that user, and pytest's own tmp folders are private to root)."""
    return reachable_dir


def _job(command: str, code_dir: Path, trial: str = "t1", attempt: int = 1) -> JobRequest:
    return JobRequest(
        who=TrialIdentity("exp1", trial, 3, attempt), parameters={"x": 0.5},
        config={"trialCommand": command, "trainingService": {"platform": "local"}},
        code_dir=code_dir, metrics_url="http://127.0.0.1:9/acct/container?sig=x",
    )


class _Recorder:
    def __init__(self) -> None:
        self.reports: list[TrialStatusChanged] = []
        self.uploads: list[Path] = []
        self.ended = asyncio.Event()

    async def report(self, msg: TrialStatusChanged) -> None:
        self.reports.append(msg)
        if msg.status != TrialStatus.RUNNING:
            self.ended.set()

    async def upload(self, who: TrialIdentity, output_dir: Path) -> None:
        self.uploads.append(output_dir)


def _backend(tmp_path: Path, rec: _Recorder) -> LocalBackend:
    return LocalBackend(tmp_path / "work", rec.report, rec.upload, gpus=GpuAllocator([]))


async def test_a_trial_runs_with_its_environment_and_its_exit_is_reported(tmp_path: Path) -> None:
    rec = _Recorder()
    backend = _backend(tmp_path, rec)
    script = ("import os, sys; "
              "print(os.environ['NNI_TRIAL_JOB_ID'], os.environ['NNI_TRIAL_SEQ_ID'], "
              "os.environ['TUNEBUS_PARAMETERS'], 'TUNEBUS_STORAGE_CONNECTION_STRING' in os.environ, "
              "'%d.%d' % sys.version_info[:2], os.getuid())")
    await backend.submit(_job(f'python3 -c "{script}"', tmp_path))
    await asyncio.wait_for(rec.ended.wait(), 30)
    assert [r.status for r in rec.reports] == [TrialStatus.RUNNING, TrialStatus.SUCCEEDED]
    assert rec.reports[-1].exit_code == 0 and rec.reports[-1].parameter_id == 3
    out = (rec.uploads[0] / "stdout.log").read_text().split()
    assert out[:4] == ["t1", "3", '{"x":0.5}', "False"]  # no service secret reaches a trial
    assert out[4] == f"{sys.version_info[0]}.{sys.version_info[1]}"  # the venv's python or its version
    assert out[5] != "0", "a trial never runs as root"
    assert backend.running() == {}


async def test_a_crashing_trial_is_failed_with_the_tail_of_its_stderr(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="tunebus.trace")
    rec = _Recorder()
    backend = _backend(tmp_path, rec)
    crash = "import sys; print('boom: bad lr', file=sys.stderr); sys.exit(3)"
    await backend.submit(_job(f'python3 -c "{crash}"', tmp_path))
    await asyncio.wait_for(rec.ended.wait(), 30)
    end = rec.reports[-1]
    assert end.status == TrialStatus.FAILED and end.exit_code == 3
    assert "exit code 3" in (end.error or "") and "boom: bad lr" in (end.error or "")
    # At DEBUG, the trace says how long the process ran (TUNEBUS_LOG_LEVEL=DEBUG).
    assert any(r.getMessage().startswith("trial exp1/t1 attempt 1 exited 3 after ")
               for r in caplog.records if r.name == "tunebus.trace")


async def test_kill_ends_the_trial_with_the_requested_status(tmp_path: Path) -> None:
    rec = _Recorder()
    backend = _backend(tmp_path, rec)
    await backend.submit(_job("sleep 600", tmp_path))
    assert backend.running() == {"exp1": {"t1": 1}}
    assert await backend.kill("exp1", "t1", TrialStatus.EARLY_STOPPED, "Medianstop")
    await asyncio.wait_for(rec.ended.wait(), 30)  # ended by the kill: the sleep alone takes 10 min
    assert rec.reports[-1].status == TrialStatus.EARLY_STOPPED
    assert not await backend.kill("exp1", "nope", TrialStatus.USER_CANCELED, "x")


PARENT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from services.aml_submitter.backend import JobRequest
    from services.aml_submitter.gpus import GpuAllocator
    from services.aml_submitter.local import LocalBackend
    from services.aml_submitter.trial_env import TrialIdentity

    async def nothing(*args):
        pass

    async def main():
        backend = LocalBackend(Path(sys.argv[1]), nothing, nothing, gpus=GpuAllocator([]))
        job = JobRequest(TrialIdentity("e", "t", 0), {}, {"trialCommand": "sleep 60"}, None, "http://x/a/c")
        await backend.submit(job)
        for trials in backend._running.values():
            print(trials.proc.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_a_trial_dies_with_its_submitter(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    shell_pid = int(parent.stdout.readline())
    # setpriv sets the parent-death signal, then execs the shell: kill the parent only after that
    # (a parent killed in between leaves an orphan; that window is a few milliseconds at start).
    deadline = time.monotonic() + 10
    while "setpriv" in Path(f"/proc/{shell_pid}/cmdline").read_bytes().split(b"\0")[0].decode():
        assert time.monotonic() < deadline, "the trial never started"
        time.sleep(0.01)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(shell_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(shell_pid, signal.SIGKILL)
    raise AssertionError("the trial outlived its submitter")


def test_the_trial_runtime_is_compiled_so_trials_do_not_compile_it(tmp_path: Path) -> None:
    import importlib.util

    from services.aml_submitter.local import compile_trial_runtime
    from services.aml_submitter.trial_env import TRIAL_RUNTIME_DIR

    copy = tmp_path / "trial_runtime"
    shutil.copytree(TRIAL_RUNTIME_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shim = copy / "nni" / "__init__.py"
    cached = Path(importlib.util.cache_from_source(str(shim)))
    assert not cached.exists()
    assert compile_trial_runtime(copy)
    assert cached.exists() and cached.stat().st_mtime >= shim.stat().st_mtime


async def test_two_attempts_of_a_trial_run_apart_and_a_kill_may_name_one(tmp_path: Path) -> None:
    # Attempt 1 left running by a stalled start, attempt 2 sent to this same replica: both run,
    # the heartbeat names the newer, and stopping attempt 1 leaves attempt 2 alone.
    rec = _Recorder()
    backend = _backend(tmp_path, rec)
    await backend.submit(_job("sleep 600", tmp_path, attempt=1))
    await backend.submit(_job("sleep 600", tmp_path, attempt=2))
    await backend.submit(_job("sleep 600", tmp_path, attempt=2))  # a duplicate: started once
    assert backend.running() == {"exp1": {"t1": 2}}
    assert await backend.kill("exp1", "t1", TrialStatus.SYS_CANCELED, "abandoned", attempt=1)
    await asyncio.wait_for(rec.ended.wait(), 30)
    [end] = [r for r in rec.reports if r.status != TrialStatus.RUNNING]
    assert end.attempt == 1 and end.status == TrialStatus.SYS_CANCELED
    assert backend.running() == {"exp1": {"t1": 2}}
    assert sorted(r.attempt for r in rec.reports if r.status == TrialStatus.RUNNING) == [1, 2]
    assert await backend.kill("exp1", "t1", TrialStatus.USER_CANCELED, "stop")  # any attempt
    await backend.close()


async def test_nothing_of_an_ended_trial_stays_in_the_work_folder(tmp_path: Path) -> None:
    # A 10,000-trial experiment must not leave 10,000 empty folders on the replica's disk.
    rec = _Recorder()
    backend = _backend(tmp_path, rec)
    await backend.submit(_job("true", tmp_path, trial="t1"))
    await backend.submit(_job("exit 4", tmp_path, trial="t2"))
    assert (tmp_path / "work" / "exp1" / "trials" / "t1").is_dir()
    await asyncio.wait_for(asyncio.gather(*backend._watchers), 30)
    ends = sorted((r.trial_id, r.status) for r in rec.reports if r.status != TrialStatus.RUNNING)
    assert ends == [("t1", TrialStatus.SUCCEEDED), ("t2", TrialStatus.FAILED)]
    assert not (tmp_path / "work" / "exp1").exists()


def test_a_trial_folder_is_made_even_if_an_ended_trial_removes_its_empty_parent_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.aml_submitter.local import make_trial_folder

    folder = tmp_path / "exp1" / "trials" / "t1" / "attempt-2"
    real_mkdir = os.mkdir
    removed: list[str] = []

    def mkdir_after_a_cleanup(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        # The parent was just made; another attempt's end removes it, empty, before the leaf is.
        if Path(path) == folder and not removed and folder.parent.is_dir():
            os.rmdir(folder.parent)
            removed.append(str(folder.parent))
        real_mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", mkdir_after_a_cleanup)
    make_trial_folder(folder)
    assert removed and folder.is_dir()
