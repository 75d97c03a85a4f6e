"""The tuner service's side of a custom-algorithm worker (:mod:`services.tuner.worker`).

:class:`AlgorithmProcess` starts one worker per experiment and makes blocking requests to it,
each bounded by a deadline: past it, or when the worker dies (its memory limit, a crash), the
worker is killed and the request raises :class:`WorkerFailed`. Nothing the worker sends is
trusted: replies are bounded JSON lines, read as data (never unpickled).

The worker runs in the experiment's own folder with an allowlisted environment: no service
credential (storage key, broker password) reaches the user's code. A tuner running as root
starts it as the trial user (:class:`shared.sandbox.Sandbox`: setpriv, no new privileges), who
owns only that folder; any other tuner makes itself non-dumpable (:func:`make_non_dumpable`) so
that the worker, running as the same user, cannot read its ``/proc/<tuner>/environ`` or memory.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shared.sandbox import Sandbox, SandboxError

__all__ = ["AlgorithmProcess", "CallTimedOut", "RemoteConfigError", "RemoteError", "RemoteNoMoreTrials",
           "WorkerFailed", "worker_environment"]

log = logging.getLogger("tunebus.tuner")

#: The longest reply line read from a worker (parameters and verdicts are small).
MAX_REPLY_BYTES = 16 * 1024 * 1024
#: Environment variables a worker inherits (locale and time zone); the rest is set here.
INHERITED_ENVIRONMENT = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT")
#: Where ``services`` is imported from: the worker imports ``services.tuner.worker`` from there.
_CODE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerFailed(Exception):
    """The worker is gone (killed after a deadline, or died); the experiment cannot go on."""


class CallTimedOut(WorkerFailed):
    """A request outlived its deadline; the worker was killed."""


class RemoteError(Exception):
    """The user's code raised in the worker; ``tail`` is the end of its traceback."""

    def __init__(self, message: str, tail: str, role: str | None = None) -> None:
        super().__init__(message)
        self.tail = tail
        self.role = role  # which algorithm, when the worker says (a load names it)


class RemoteConfigError(RemoteError):
    """The worker could not build an algorithm from the config (class not found, classArgs)."""


class RemoteNoMoreTrials(RemoteError):
    """The tuner raised NNI's ``NoMoreTrialError``."""


_ERROR_KINDS: dict[str, type[RemoteError]] = {"config": RemoteConfigError,
                                               "no_more_trials": RemoteNoMoreTrials}


def worker_environment(experiment_id: str, work_dir: Path, python_dir: Path | None = None) -> dict[str, str]:
    """What a worker sees of the environment: locale, a path, NNI's experiment variables."""
    env = {name: os.environ[name] for name in INHERITED_ENVIRONMENT if name in os.environ}
    env.update({
        "PATH": str(python_dir or Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin",
        "HOME": str(work_dir),
        "PYTHONPATH": _CODE_ROOT,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # BLAS thread pools reserve address space per thread: under RLIMIT_AS one pool is enough.
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "NNI_EXP_ID": experiment_id,
        "NNI_PLATFORM": "tunebus",
    })
    return env


class AlgorithmProcess:
    """One experiment's worker; requests are made one at a time, each within ``deadline``."""

    def __init__(self, experiment_id: str, work_dir: Path, *, memory_limit_bytes: int,
                 sandbox: Sandbox | None = None) -> None:
        self.experiment_id = experiment_id
        self.work_dir = work_dir
        self.memory_limit_bytes = memory_limit_bytes
        #: Who the worker runs as: the trial user when this tuner is root (None: this process's user).
        self.sandbox = sandbox
        #: The monotonic time by which the current request must be answered (set per call).
        self.deadline = float("inf")
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._failure: str | None = None
        self._killed = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start the worker (in :attr:`work_dir`); its own session, so a kill takes its children.

        SandboxError when the trial user can be given neither the folder nor an interpreter."""
        python_dir, prefix = Path(sys.executable).parent, []
        if self.sandbox is not None and self.sandbox.user is not None:
            try:
                python_dir, _ = self.sandbox.trial_interpreter(python_dir,
                                                               self.work_dir.parent / ".worker-python")
                self.sandbox.hand_over(self.work_dir)
            except SandboxError as exc:
                raise WorkerFailed(f"cannot start its worker as {self.sandbox.user.name}: {exc}") from None
            # Through /bin/sh, as trials start: the interpreter is looked up as the trial user.
            prefix = [*self.sandbox.prefix(), "/bin/sh", "-c", 'exec "$0" "$@"']
        self._proc = subprocess.Popen(
            [*prefix, str(python_dir / "python3"), "-m", "services.tuner.worker",
             "--memory-limit", str(self.memory_limit_bytes), "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.work_dir,
            env=worker_environment(self.experiment_id, self.work_dir, python_dir), start_new_session=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        os.set_blocking(self._proc.stdout.fileno(), False)

    def request(self, payload: dict[str, Any]) -> Any:
        """Send one request and return the reply's result; RemoteError for the user's code's
        errors, WorkerFailed when the worker is gone or the deadline passes."""
        if self._failure is not None:
            raise WorkerFailed(self._failure)
        if self._proc is None:
            self.start()
        self._send(json.dumps(payload, allow_nan=False).encode() + b"\n")
        reply = self._parse(self._receive_line())
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            kind = _ERROR_KINDS.get(str(error.get("kind")), RemoteError)
            raise kind(str(error.get("message", ""))[:8000], str(error.get("traceback", ""))[:8000],
                       str(error.get("role")) if error.get("role") else None)
        return reply.get("ok")

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not ("ok" in reply or "error" in reply):
            self._fail(f"the custom algorithm's process sent an invalid reply: {line[:200]!r}")
        return reply  # type: ignore[return-value]

    def _send(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        while data:
            self._wait(fd, readable=False)
            try:
                data = data[os.write(fd, data):]
            except BrokenPipeError:
                self._fail(self._exit_reason())

    def _receive_line(self) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY_BYTES:
                self._fail(f"the custom algorithm's process sent a reply over {MAX_REPLY_BYTES} bytes")
            self._wait(fd, readable=True)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._fail(self._exit_reason())
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _wait(self, fd: int, *, readable: bool) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._fail("deadline passed", timed_out=True)
        ready = select.select([fd] if readable else [], [] if readable else [fd], [], remaining)
        if not any(ready):
            self._fail("deadline passed", timed_out=True)

    def _exit_reason(self) -> str:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the custom algorithm's process closed its channel"
        if code == -signal.SIGKILL:
            return ("the custom algorithm's process was killed (SIGKILL: out of memory?); "
                    f"limit {self.memory_limit_bytes // 2**20} MiB (TUNEBUS_CUSTOM_MEMORY_LIMIT_MB)")
        if code < 0:
            return f"the custom algorithm's process was killed by signal {-code}"
        return f"the custom algorithm's process exited with code {code}"

    def _fail(self, reason: str, *, timed_out: bool = False) -> None:
        self.kill()
        self._failure = reason
        raise (CallTimedOut if timed_out else WorkerFailed)(reason)

    def kill(self) -> None:
        """End the worker and everything it started (idempotent)."""
        proc = self._proc
        if proc is None or self._killed:
            return
        self._killed = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives a dead leader: its children too
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
