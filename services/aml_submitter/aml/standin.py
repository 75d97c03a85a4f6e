"""NOT AZURE. A local stand-in for Azure ML's workspace / experiment / run boundary, for tests.

Selected only by the submitter's ``TUNEBUS_AML_STANDIN=1``; it logs a WARNING at start and at
every submission saying that trials do not run on Azure ML. It replaces exactly the objects
the AML backend talks to — ``Workspace``, ``ComputeTarget``, ``Experiment``, ``Run`` — with
the same constructor and method names, and receives the real ``ScriptRunConfig`` the backend
built. ``Experiment.submit`` copies the config's snapshot (``source_directory``) to a run
folder and starts a *runner* process there which walks the run through AML's statuses::

    NotStarted → Queued → Preparing → Starting → Running → Finalizing → Completed | Failed
                                             (cancel) → CancelRequested → Canceled

and runs the config's ``command`` with ``bash -c`` in the copy, with the config's runtime
environment variables, on this machine (the machine's Python stands in for the image's).
Delays: ``submit_latency`` (how long the blocking ``submit`` call takes in all, as
azureml-core's takes about a second), ``queue_delay``, ``prepare_delay`` — the submitter's
``TUNEBUS_AML_STANDIN_*`` settings.

Runs outlive the replica that submitted them, as AML runs do: each run is a folder under a
*registry* directory (``state.json`` with the runner's pid, the snapshot copy, logs), and any
replica reads a run's status from there. The limitation, plainly: that registry is a local
folder, so replicas must share this machine's filesystem (or the folder on a shared mount);
replicas on other machines cannot see each other's stand-in runs. A run whose runner process
died (the machine rebooted) reports ``NotResponding``, as AML does for a node it lost.

This file imports only the standard library: the runner is started as
``python standin.py run <run folder>``, without importing tunebus.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PORTAL_SCHEME",
    "ComputeTarget",
    "Experiment",
    "Run",
    "RunAlreadyExists",
    "RunNotFound",
    "StandinError",
    "StandinSettings",
    "Workspace",
]

log = logging.getLogger("tunebus.submitter.aml.standin")

#: Portal URLs of stand-in runs start with this: they are not Azure's.
PORTAL_SCHEME = "standin://"
_TERMINAL = ("Completed", "Failed", "Canceled")
_TAIL_CHARS = 3000
_POLL = 0.05


class StandinError(Exception):
    """An error of the stand-in's 'service', with the HTTP status AML would answer."""

    status_code = 400


class RunNotFound(StandinError):
    """No run with that id in the registry (AML: 404)."""

    status_code = 404


class RunAlreadyExists(StandinError):
    """A run with that id exists already (AML: 409 Conflict)."""

    status_code = 409


@dataclass(frozen=True)
class StandinSettings:
    """Where the run registry lives and how slow the stand-in 'service' is (seconds)."""

    registry: Path
    submit_latency: float = 0.0
    queue_delay: float = 0.0
    prepare_delay: float = 0.0
    # How runs are sandboxed like local trials (the submitter's sandbox, see ../sandbox.py):
    # "prefix" (setpriv argv), "owner" ([uid, gid] the run folder is given to, or None),
    # "path_first" (interpreter folder), "pythonpath" (extra entries), "allowed" (variable names
    # passed from this environment, besides LC_*). Empty: no sandbox (unit tests of the stand-in).
    sandbox: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- files of one run


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)  # atomic: readers see the old or the new document


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by the replica that started it) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# ---------------------------------------------------------------- the azureml-core look-alikes


class Workspace:
    """Stands in for ``azureml.core.Workspace``: names only, no service behind it."""

    def __init__(self, subscription_id: str, resource_group: str, workspace_name: str,
                 auth: Any = None, *, settings: StandinSettings) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.name = workspace_name
        self.settings = settings
        settings.registry.mkdir(parents=True, exist_ok=True)


class ComputeTarget:
    """Stands in for ``azureml.core.compute.ComputeTarget``: every name exists (this machine)."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name


class Experiment:
    """Stands in for ``azureml.core.Experiment``: ``submit`` starts a local runner process."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name

    def submit(self, config: Any, tags: dict[str, str] | None = None, run_id: str | None = None) -> Run:
        """Take a ``ScriptRunConfig``: copy its snapshot, start its command; returns the Run.

        The call takes ``submit_latency`` seconds in all (its own work included), as a real
        submission's round trips and snapshot upload do.
        """
        started = time.monotonic()
        settings = self.workspace.settings
        log.warning("AML STAND-IN (not Azure ML): submitting run %s of experiment %s to this machine",
                    run_id, self.name)
        run_id = run_id or f"{self.name}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
        folder = settings.registry / run_id
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            raise RunAlreadyExists(f"run {run_id} already exists") from None
        shutil.copytree(config.source_directory, folder / "wd", symlinks=True)
        run_config = config.run_config
        spec = {
            "run_id": run_id,
            "experiment": self.name,
            "workspace": self.workspace.name,
            "target": str(run_config.target),
            "image": run_config.environment.docker.base_image,
            "command": config.command if isinstance(config.command, str) else " ".join(config.command),
            "environment_variables": dict(run_config.environment_variables or {}),
            "max_run_duration_seconds": run_config.max_run_duration_seconds,
            "tags": dict(tags or {}),
            "delays": {"queue": settings.queue_delay, "prepare": settings.prepare_delay},
            "sandbox": settings.sandbox,
        }
        _write_json(folder / "spec.json", spec)
        _write_json(folder / "state.json", {"status": "NotStarted", "runner_pid": None, "error": None,
                                            "submitted": time.time()})
        owner = settings.sandbox.get("owner")
        if owner:  # the run's folder is the trial's (it writes ./outputs), as a job's is on AML
            for path in (folder / "wd", *(folder / "wd").rglob("*")):
                os.chown(path, owner[0], owner[1], follow_symlinks=False)
        with (folder / "runner.log").open("ab") as out:
            runner = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "run", str(folder)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # the run outlives the replica, as an AML run does
                env=_allowed_environment(settings.sandbox) if settings.sandbox else None,
            )
        # The runner writes its pid into state.json once it runs; until then this tells it.
        _write_json(folder / "starter.json", {"runner_pid": runner.pid})
        time.sleep(max(0.0, settings.submit_latency - (time.monotonic() - started)))
        return Run(self, run_id)


def _allowed_environment(sandbox: dict[str, Any]) -> dict[str, str]:
    """This process's variables a run may see: the sandbox's allowed names and LC_*."""
    allowed = set(sandbox.get("allowed") or ())
    return {k: v for k, v in os.environ.items() if k in allowed or k.startswith("LC_")}


class Run:
    """Stands in for ``azureml.core.Run``: status, details, portal URL and cancel from the registry."""

    def __init__(self, experiment: Experiment, run_id: str) -> None:
        self.experiment = experiment
        self.id = run_id
        self._folder = experiment.workspace.settings.registry / run_id

    @staticmethod
    def get(workspace: Workspace, run_id: str) -> Run:
        """The run with that id (any replica's), or :class:`RunNotFound`."""
        folder = workspace.settings.registry / run_id
        if not (folder / "spec.json").exists():
            raise RunNotFound(f"run {run_id} not found")
        spec = _read_json(folder / "spec.json")
        return Run(Experiment(workspace, spec["experiment"]), run_id)

    def _state(self) -> dict[str, Any]:
        try:
            return _read_json(self._folder / "state.json")
        except FileNotFoundError:
            raise RunNotFound(f"run {self.id} not found") from None

    def _runner_pid(self, state: dict[str, Any]) -> int | None:
        pid = state.get("runner_pid")
        if pid is None and (self._folder / "starter.json").exists():
            pid = _read_json(self._folder / "starter.json").get("runner_pid")
        return int(pid) if pid else None

    def get_status(self) -> str:
        """One of AML's status words."""
        state = self._state()
        status = str(state["status"])
        if status in _TERMINAL:
            return status
        cancel_requested = (self._folder / "cancel").exists()
        if not _pid_alive(self._runner_pid(state)):
            # Re-read: the runner may have written its last status and exited in between.
            status = str(self._state()["status"])
            if status in _TERMINAL:
                return status
            if cancel_requested:
                return "Canceled"  # nothing runs any more
            if status != "NotStarted" or time.time() - float(state.get("submitted", 0)) > 30:
                return "NotResponding"
        return "CancelRequested" if cancel_requested else status

    def get_details(self) -> dict[str, Any]:
        """AML's run details: id, status, target, times, tags and, for a failed run, ``error``."""
        state = self._state()
        spec = _read_json(self._folder / "spec.json")
        details: dict[str, Any] = {
            "runId": self.id,
            "status": self.get_status(),
            "target": spec["target"],
            "startTimeUtc": state.get("started"),
            "endTimeUtc": state.get("ended"),
            "tags": spec["tags"],
            "properties": {"tunebus.standin": "true"},
            "logFiles": {"user_logs/std_log.txt": str(self._folder / "std_log.txt")},
        }
        if state.get("error"):
            details["error"] = {"error": {"code": "UserError", "message": state["error"]}}
        return details

    def get_portal_url(self) -> str:
        """A URL that says what it is: the stand-in's, not Azure's portal."""
        ws = self.experiment.workspace
        return f"{PORTAL_SCHEME}not-azure/{ws.name}/{self.experiment.name}/runs/{self.id}"

    def cancel(self) -> None:
        """Ask the run to stop: CancelRequested, then Canceled once its command is gone."""
        state = self._state()
        if state["status"] in _TERMINAL:
            return
        (self._folder / "cancel").write_text(str(time.time()))
        # The runner watches for that file; a signal makes it quicker, once the runner has
        # said (by writing its pid) that it is ready for one.
        pid = state.get("runner_pid")
        if pid and _pid_alive(int(pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGTERM)


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
    """Walks one run through AML's statuses; runs in its own process (``standin.py run DIR``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec = _read_json(folder / "spec.json")
        first = _read_json(folder / "state.json")
        self.state = _RunnerState("NotStarted", os.getpid(), float(first.get("submitted") or time.time()))
        self.signaled = False

    @property
    def canceled(self) -> bool:
        return self.signaled or (self.folder / "cancel").exists()

    def set(self, status: str, **fields: Any) -> None:
        self.state.status = status
        for key, value in fields.items():
            setattr(self.state, key, value)
        _write_json(self.folder / "state.json", asdict(self.state))

    def on_term(self, signum: int, frame: Any) -> None:
        self.signaled = True

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.canceled and time.monotonic() < deadline:
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))

    def environment(self) -> dict[str, str]:
        # As on AML, the trial sees none of the service's settings or Azure credentials.
        sandbox = self.spec.get("sandbox") or {}
        if sandbox:
            env = _allowed_environment(sandbox)
            env["PATH"] = f"{sandbox['path_first']}{os.pathsep}{env.get('PATH', os.defpath)}"
            env["HOME"] = str(self.folder / "wd")
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEBUS_", "AZURE_"))}
            env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
            env.pop("PYTHONPATH", None)
        env.update(self.spec["environment_variables"])
        if sandbox.get("pythonpath"):  # after the job's own (the command prepends the shim)
            env["PYTHONPATH"] = os.pathsep.join(sandbox["pythonpath"])
        env["PYTHONUNBUFFERED"] = "1"
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
        self.set("Queued")  # with this process's pid: from now on a cancel may signal it
        self.wait(float(delays.get("queue") or 0))
        if not self.canceled:
            self.set("Preparing")
            self.wait(float(delays.get("prepare") or 0))
        if not self.canceled:
            self.set("Starting")
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
        sys.exit("usage: standin.py run RUN_FOLDER")
    _Runner(Path(sys.argv[2])).main()
