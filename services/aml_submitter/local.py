"""The local backend: each trial is a process on this replica's machine.

The process's exit is an event (``await proc.wait()``), not a poll. Trials get the venv's
interpreter first on PATH (so ``python3 trial.py`` starts in milliseconds and sees the same
packages as tunebus), the ``nni`` shim first on PYTHONPATH, and GPUs through
``CUDA_VISIBLE_DEVICES``. A trial dies with its submitter (PR_SET_PDEATHSIG): a replica that
is killed leaves no orphan writing metrics nobody collects; the dispatcher sees its
heartbeats stop and runs the trial again. Each trial is sandboxed (:mod:`.sandbox`): an
allowlisted environment, the unprivileged trial user when the submitter is root, no new
privileges, its output folder its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.checkpoints import managed_checkpoints
from shared.messages import TrialStatus, TrialStatusChanged
from shared.sandbox import Sandbox, SandboxError, allowlisted_environment

from .backend import JobRequest, PermanentSubmitError, Reporter, SubmitError
from .checkpoints import CheckpointError, CheckpointFolders, CheckpointTransfer
from .gpus import GpuAllocator
from .trial_env import TRIAL_RUNTIME_DIR, TrialIdentity, trial_environment

__all__ = ["LocalBackend", "compile_trial_runtime", "make_trial_folder", "remove_empty_parents",
           "stderr_tail"]

log = logging.getLogger("tunebus.submitter.local")
trace = logging.getLogger("tunebus.trace")  # each trial process's run time, at DEBUG

TAIL_LINES = 30
TAIL_CHARS = 4000
KILL_GRACE_SECONDS = 5.0
LOG_UPLOAD_TIMEOUT = 60.0
#: A trial folder is made again this many times when an ended trial removes an empty parent meanwhile.
FOLDER_RETRIES = 10

LogUploader = Callable[[TrialIdentity, Path], Awaitable[None]]


def stderr_tail(path: Path) -> str:
    """The last lines of a trial's stderr, bounded, for the trial's error."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_CHARS * 2))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-TAIL_LINES:])[-TAIL_CHARS:]


def make_trial_folder(folder: Path) -> None:
    """``mkdir -p folder``, where another attempt's end may remove an empty parent meanwhile."""
    for _ in range(FOLDER_RETRIES):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:  # a parent made a moment ago was removed, empty, by a trial's end
            continue
    folder.mkdir(parents=True, exist_ok=True)


def remove_empty_parents(folder: Path, root: Path) -> None:
    """Remove ``folder`` and then its parents up to (not including) ``root`` while they are empty."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (another trial's folder), or already gone
            return
        folder = folder.parent


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _spawn(command: str, cwd: Path, env: dict[str, str], out: IO[bytes],
                 err: IO[bytes], prefix: list[str]) -> asyncio.subprocess.Process:
    """Start ``command`` under /bin/sh in a session of its own, to die with this process.

    ``prefix`` is the sandbox's util-linux ``setpriv`` (user, no new privileges, parent-death
    signal). It also spares the submitter a preexec_fn, which forces a full fork of this (100+
    MB) process per trial instead of a vfork (benchmarks/README_startup.md).
    """
    common: dict[str, Any] = dict(cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  start_new_session=True)
    if prefix:
        return await asyncio.create_subprocess_exec(*prefix, "/bin/sh", "-c", command, **common)
    return await asyncio.create_subprocess_shell(command, preexec_fn=_die_with_parent, **common)


def compile_trial_runtime(folder: Path = TRIAL_RUNTIME_DIR) -> bool:
    """Write the ``nni`` shim's bytecode next to it, once, so trials load it instead of compiling
    it at every start (a third of a no-op trial's CPU): trials may run with
    PYTHONDONTWRITEBYTECODE, and an editable install never compiles it. False if it could not
    be written (a read-only install); trials then compile it in memory, as before."""
    import compileall

    try:
        return bool(compileall.compile_dir(folder, quiet=2))
    except OSError:
        return False


@dataclass
class _Running:
    job: JobRequest
    proc: asyncio.subprocess.Process
    output_dir: Path
    log_dir: Path  # the submitter's, beside output_dir: the trial cannot swap its logs for links
    gpus: list[int] = field(default_factory=list)
    kill_status: TrialStatus | None = None
    kill_reason: str | None = None
    started_report: asyncio.Task[None] | None = None  # RUNNING, sent before the end is
    checkpoints: CheckpointFolders | None = None  # PBT's, when tunebus keeps them
    started_at: float = field(default_factory=time.perf_counter)


class LocalBackend:
    """Runs trials as child processes; one instance per submitter replica."""

    platform = "local"

    def __init__(self, work_dir: Path, report: Reporter, upload_logs: LogUploader,
                 gpus: GpuAllocator | None = None, interpreter_dir: Path | None = None,
                 sandbox: Sandbox | None = None, sandbox_error: str | None = None,
                 checkpoints: CheckpointTransfer | None = None) -> None:
        self.work_dir = work_dir
        self.checkpoints = checkpoints  # None: PBT experiments whose checkpoints tunebus keeps fail
        self.report = report
        self.upload_logs = upload_logs
        self.gpus = gpus or GpuAllocator.detect()
        self.venv_bin = interpreter_dir or Path(sys.executable).parent
        self._sandbox_error = sandbox_error
        try:
            self.sandbox = sandbox or Sandbox.for_this_process()
        except SandboxError as exc:
            self._sandbox_error = str(exc)
        if self._sandbox_error is not None:  # every local trial fails with it, instead of running as root
            self.sandbox = Sandbox(None)
            log.error("local trials are refused: %s", self._sandbox_error)
        self._interpreter: tuple[Path, list[str]] | None = None
        self._running: dict[tuple[str, str, int], _Running] = {}  # (experiment, trial, attempt)
        self._watchers: set[asyncio.Task[None]] = set()
        if not compile_trial_runtime():
            log.warning("could not write the bytecode of %s: every trial compiles the nni shim",
                        TRIAL_RUNTIME_DIR)

    def running(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for exp, trial, attempt in self._running:
            out.setdefault(exp, {})[trial] = max(attempt, out.get(exp, {}).get(trial, 0))
        return out

    async def _interpreter_for_trials(self) -> tuple[Path, list[str]]:
        """Where trials find ``python3`` (checked once, as the trial user), and extra PYTHONPATH."""
        if self._sandbox_error is not None:
            raise PermanentSubmitError(self._sandbox_error)
        if self._interpreter is None:
            try:
                self._interpreter = await asyncio.to_thread(
                    self.sandbox.trial_interpreter, self.venv_bin, self.work_dir / ".trial-python")
            except SandboxError as exc:
                self._sandbox_error = str(exc)
                raise PermanentSubmitError(str(exc)) from exc
        return self._interpreter

    def _base_environment(self, job: JobRequest, gpus: list[int] | None, output_dir: Path) -> dict[str, str]:
        # An allowlist, not a denylist: the service's settings, storage keys, broker passwords and
        # cloud credentials stay with it, whatever their names.
        env = allowlisted_environment(os.environ, self.sandbox.passthrough)
        assert self._interpreter is not None
        interpreter_dir, site = self._interpreter
        env["PATH"] = f"{interpreter_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
        if self.sandbox.user is not None:
            env["HOME"] = str(output_dir)  # the one folder the trial user may write
        pythonpath = [str(TRIAL_RUNTIME_DIR)]
        if job.code_dir is not None:
            pythonpath.append(str(job.code_dir))
        pythonpath += site
        if env.get("PYTHONPATH"):  # only when the deployment passes it through
            pythonpath.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        env["PYTHONUNBUFFERED"] = "1"
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        return env

    async def submit(self, job: JobRequest) -> None:
        who = job.who
        key = (who.experiment_id, who.trial_id, who.attempt)
        if key in self._running:
            return  # already running here (a duplicate submit)
        await self._interpreter_for_trials()
        output_dir = self.work_dir / who.experiment_id / "trials" / who.trial_id / f"attempt-{who.attempt}"
        make_trial_folder(output_dir)
        # Logs live beside the trial's folder, not in it: in its own folder a trial could replace
        # stdout.log by a link to any file, which this (root) process would then upload as its log.
        log_dir = output_dir.with_name(f"attempt-{who.attempt}.logs")
        log_dir.mkdir(exist_ok=True)
        parameters, checkpoints = await self._checkpoints_for(job, output_dir)
        try:
            self.sandbox.hand_over(output_dir)
            if checkpoints is not None:
                self.sandbox.hand_over(checkpoints.save_dir)
        except SandboxError as exc:
            raise PermanentSubmitError(str(exc)) from exc
        gpu_count = int(job.config.get("trialGpuNumber") or 0)
        try:
            gpus = await self.gpus.acquire(gpu_count, job.config.get("trainingService") or {}) \
                if gpu_count else None
        except ValueError as exc:
            raise PermanentSubmitError(str(exc)) from exc
        env = self._base_environment(job, gpus, output_dir)
        env.update(trial_environment(who, parameters, metrics_url=job.metrics_url,
                                     output_dir=str(output_dir), platform="local"))
        command = job.config["trialCommand"]
        cwd = job.code_dir or output_dir
        try:
            with (log_dir / "stdout.log").open("wb") as out, (log_dir / "stderr.log").open("wb") as err:
                proc = await _spawn(command, cwd, env, out, err, self.sandbox.prefix())
        except OSError as exc:
            if gpus:
                self.gpus.release(gpus)
            raise PermanentSubmitError(f"cannot start trial command {command!r}: {exc}") from exc
        running = _Running(job, proc, output_dir, log_dir, gpus or [], checkpoints=checkpoints)
        self._running[key] = running
        log.info("trial %s/%s attempt %d started (pid %d)", who.experiment_id, who.trial_id, who.attempt,
                 proc.pid)
        # Started: nothing may fail the submission now (its retry would find the claim "starting"
        # and abandon the attempt). RUNNING goes out in the background, retried like the end.
        running.started_report = asyncio.create_task(self._report_retried(TrialStatusChanged(
            experiment_id=who.experiment_id, trial_id=who.trial_id, parameter_id=who.sequence_id,
            attempt=who.attempt, status=TrialStatus.RUNNING, backend_status=f"pid {proc.pid}")))
        task = asyncio.create_task(self._watch(key, running))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, key: tuple[str, str, int], running: _Running) -> None:
        code = await running.proc.wait()
        who = running.job.who
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug("trial %s/%s attempt %d exited %d after %.1f ms", who.experiment_id, who.trial_id,
                        who.attempt, code, 1000 * (time.perf_counter() - running.started_at))
        # This replica no longer runs the trial: its heartbeat stops, its GPUs are free.
        self._running.pop(key, None)
        if running.gpus:
            self.gpus.release(running.gpus)
        if running.kill_status is not None:
            status, error = running.kill_status, running.kill_reason
        elif code == 0:
            status, error = TrialStatus.SUCCEEDED, None
        else:
            status = TrialStatus.FAILED
            tail = stderr_tail(running.log_dir / "stderr.log")
            error = f"exit code {code}" + (f"; stderr tail:\n{tail}" if tail else "")
        if status == TrialStatus.SUCCEEDED and running.checkpoints is not None:
            error = await self._save_checkpoint(running)  # before the end: the next step loads it
            status = TrialStatus.FAILED if error else status
        if running.started_report is not None:
            await running.started_report  # the dispatcher hears RUNNING before the end
        await self._report_retried(TrialStatusChanged(
            experiment_id=who.experiment_id, trial_id=who.trial_id, parameter_id=who.sequence_id,
            attempt=who.attempt, status=status, exit_code=code, error=error, backend_status=f"exit {code}",
        ))
        try:
            await asyncio.wait_for(self.upload_logs(who, running.log_dir), LOG_UPLOAD_TIMEOUT)
        except Exception as exc:  # the stderr tail is in the report already; logs are a convenience
            log.warning("uploading the logs of trial %s/%s attempt %d failed: %r", *key, exc)
        finally:
            # Nothing of a finished trial stays on this machine's disk (its logs are uploaded),
            # nor the folders above it once empty (make_trial_folder copes with that).
            for folder in (running.log_dir, running.output_dir):
                await asyncio.to_thread(shutil.rmtree, folder, True)
            await asyncio.to_thread(remove_empty_parents, running.output_dir.parent, self.work_dir)

    async def _checkpoints_for(self, job: JobRequest, output_dir: Path
                               ) -> tuple[dict[str, Any], CheckpointFolders | None]:
        """The trial's parameters, with PBT's checkpoint references made local folders (filled
        from storage) when tunebus keeps the experiment's checkpoints."""
        if not managed_checkpoints(job.config):
            return job.parameters, None
        if self.checkpoints is None:
            raise PermanentSubmitError("this submitter keeps no PBT checkpoints (no storage given)")
        try:
            folders, parameters = await self.checkpoints.prepare(job, output_dir)
        except PermanentSubmitError:
            raise
        except Exception as exc:  # storage unreachable: the submission is retried
            raise SubmitError(f"loading the trial's checkpoint failed: {exc!r}") from exc
        return parameters, folders

    async def _save_checkpoint(self, running: _Running) -> str | None:
        """Upload a succeeded trial's checkpoint; the reason it failed, or None."""
        assert running.checkpoints is not None
        who = running.job.who
        try:
            count = await self.checkpoints.save(running.checkpoints) if self.checkpoints else 0
        except CheckpointError as exc:
            return f"its checkpoint was not saved: {exc}"
        except Exception as exc:
            log.warning("saving the checkpoint of trial %s/%s failed: %r", who.experiment_id, who.trial_id,
                        exc)
            return f"saving its checkpoint failed: {exc!r}"
        log.info("trial %s/%s: saved its checkpoint (%d files)", who.experiment_id, who.trial_id, count)
        return None

    async def _report_retried(self, report: TrialStatusChanged) -> None:
        """A trial's start and end must get out: retry the report (same message id) with back-off."""
        what = "start" if report.status == TrialStatus.RUNNING else "end"
        for attempt, delay in enumerate((0.5, 1, 2, 4, 8, 15, 30, 60), start=1):
            try:
                await self.report(report)
                return
            except Exception as exc:
                log.warning("reporting the %s of trial %s/%s failed (attempt %d): %r", what,
                            report.experiment_id, report.trial_id, attempt, exc)
                await asyncio.sleep(delay)
        log.error("gave up reporting the %s of trial %s/%s; its heartbeats or the dispatcher's checks "
                  "settle it", what, report.experiment_id, report.trial_id)

    async def kill(self, experiment_id: str, trial_id: str, status: TrialStatus, reason: str,
                   attempt: int | None = None) -> bool:
        targets = [running for (exp, trial, n), running in self._running.items()
                   if (exp, trial) == (experiment_id, trial_id) and attempt in (None, n)]
        await asyncio.gather(*(self._kill(running, status, reason) for running in targets))
        return bool(targets)

    @staticmethod
    async def _kill(running: _Running, status: TrialStatus, reason: str) -> None:
        running.kill_status = status
        running.kill_reason = reason
        _signal_group(running.proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(running.proc.wait()), KILL_GRACE_SECONDS)
            return
        _signal_group(running.proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        for running in list(self._running.values()):
            _signal_group(running.proc.pid, signal.SIGTERM)
            if running.started_report is not None:
                running.started_report.cancel()
        for task in list(self._watchers):
            task.cancel()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)

