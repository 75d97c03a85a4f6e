"""The stand-in's runner process: walks one run through Azure ML's statuses, in AML's order::

    NotStarted → Starting → Preparing → Queued → Running → Finalizing → Completed | Failed
                                             (cancel) → CancelRequested → Canceled

and runs the job's command with ``bash -c`` in the run's snapshot copy, with only what the
"image" and the job give in its environment. Started as ``python runner.py run <run folder>``
(:func:`aml_standin.v1.create_run`), so this file imports only the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["BASE_PATH", "read_json", "write_json"]

#: The folders a known image puts on PATH after its own (a minimal image's).
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_TAIL_CHARS = 3000
_POLL = 0.05


# ---------------------------------------------------------------- files of one run


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)  # atomic: readers see the old or the new document


def read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


# ---------------------------------------------------------------- the runner process


@dataclass
class _RunnerState:
    status: str
    runner_pid: int
    submitted: float
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None


class _Runner:
    """Walks one run through AML's statuses; runs in its own process (``runner.py run DIR``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec = read_json(folder / "spec.json")
        first = read_json(folder / "state.json")
        self.state = _RunnerState("NotStarted", os.getpid(), float(first.get("submitted") or time.time()))
        self.signaled = False

    @property
    def canceled(self) -> bool:
        return self.signaled or (self.folder / "cancel").exists()

    def set(self, status: str, **fields: Any) -> None:
        self.state.status = status
        for key, value in fields.items():
            setattr(self.state, key, value)
        write_json(self.folder / "state.json", asdict(self.state))

    def on_term(self, signum: int, frame: Any) -> None:
        self.signaled = True

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.canceled and time.monotonic() < deadline:
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))

    def environment(self) -> dict[str, str]:
        # Only what the image and the job give, as in an AML container: never the host's. A
        # sandboxed run (as local trials are) gets an interpreter its user can run, and its folder.
        sandbox = self.spec.get("sandbox") or {}
        interpreter = sandbox.get("path_first") or self.spec["image_bin"]
        home = self.folder / "wd" if sandbox.get("owner") else self.folder
        env = {"PATH": f"{interpreter}{os.pathsep}{BASE_PATH}", "HOME": str(home),
               "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
        env.update(self.spec["environment_variables"])
        if sandbox.get("pythonpath"):  # after the job's own (the command prepends the shim)
            env["PYTHONPATH"] = os.pathsep.join(sandbox["pythonpath"])
        env["AZUREML_RUN_ID"] = self.spec["run_id"]
        return env

    def run_command(self) -> int:
        wd = self.folder / "wd"
        limit = self.spec.get("max_run_duration_seconds")
        deadline = time.monotonic() + float(limit) if limit else None
        with (self.folder / "std_log.txt").open("wb") as out:
            prefix = list((self.spec.get("sandbox") or {}).get("prefix") or [])
            child = subprocess.Popen([*prefix, "bash", "-c", self.spec["command"]], cwd=wd,
                                     env=self.environment(),
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            while (code := child.poll()) is None:
                if deadline is not None and time.monotonic() > deadline:
                    self.signaled = True  # AML cancels a run past max_run_duration_seconds
                if self.canceled:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.pid, signal.SIGTERM)
                    return child.wait()
                time.sleep(_POLL)
            return code

    def tail(self) -> str:
        try:
            data = (self.folder / "std_log.txt").read_bytes()[-_TAIL_CHARS:]
        except OSError:
            return ""
        return data.decode(errors="replace")

    def main(self) -> None:
        signal.signal(signal.SIGTERM, self.on_term)
        delays = self.spec.get("delays") or {}
        self.set("Starting")  # with this process's pid: from now on a cancel may signal it
        if not self.canceled:
            self.set("Preparing")
            self.wait(float(delays.get("prepare") or 0))
        if not self.canceled and not self.spec.get("image_known"):
            self.set("Failed", ended=time.time(), error=(
                f"ImagePullFailed: the image {self.spec['image']!r} cannot be pulled (the stand-in knows "
                "only the images in TUNEBUS_AML_STANDIN_IMAGES)"))
            return
        if not self.canceled:
            self.set("Queued")
            self.wait(float(delays.get("queue") or 0))
        code: int | None = None
        if not self.canceled:
            self.set("Running", started=time.time())
            code = self.run_command()
        if self.canceled:
            self.set("Canceled", ended=time.time(), exit_code=code)
            return
        self.set("Finalizing", exit_code=code)
        if code == 0:
            self.set("Completed", ended=time.time())
        else:
            error = f"command exited with code {code}; end of its log:\n{self.tail()}"
            self.set("Failed", ended=time.time(), error=error)


if __name__ == "__main__":  # pragma: no cover - the runner process
    if len(sys.argv) != 3 or sys.argv[1] != "run":
        sys.exit("usage: runner.py run RUN_FOLDER")
    _Runner(Path(sys.argv[2])).main()
