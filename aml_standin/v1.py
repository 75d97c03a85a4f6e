"""NOT AZURE. A local stand-in for Azure ML's workspace / experiment / run boundary, for tests.

Selected only by the submitter's ``TUNEBUS_AML_STANDIN=1``; it logs a WARNING at start and at
every submission saying that trials do not run on Azure ML. It replaces exactly the objects
the AML backend talks to — ``Workspace``, ``ComputeTarget``, ``Experiment``, ``Run`` — with
the same constructor and method names, and receives the real ``ScriptRunConfig`` the backend
built. ``Experiment.submit`` copies the config's snapshot (``source_directory``) to a run
folder by the SDK's rules (at most 2,000 files and 300 MB, symbolic links followed, file modes
not kept: an executable bit does not survive, as in an AML snapshot) and starts a *runner*
process there which walks the run through AML's statuses, in AML's order::

    NotStarted → Starting → Preparing → Queued → Running → Finalizing → Completed | Failed
                                             (cancel) → CancelRequested → Canceled

and runs the config's ``command`` with ``bash -c`` in the copy, with a minimal environment:
only what the "image" and the job give (``PATH`` with the image's bin folder, ``HOME``, the
run's variables), never the submitter's own. Strict where AML is:

- a compute name not in ``computes`` is ``ComputeTargetException("ComputeTargetNotFound: ...")``;
- an image not in ``images`` fails the run at Preparing (AML cannot pull it); a known image
  is this machine's Python (``sys.executable``'s folder first on PATH);
- errors have the SDK's shapes: ``Run.get`` of a missing run a ``ServiceException`` with a
  ``status_code`` of 404; ``Experiment.submit`` an ``ExperimentExecutionException`` whose HTTP
  status is only inside its JSON message (409 for a run id in use);
- tags are set by a call after the run exists, as azureml-core does;
- faults can be injected (:func:`inject_fault`): an HTTP error on ``submit`` before the run
  exists, on the tags call after it exists, on ``Run.get``, or a cancel that silently does
  nothing (azureml-core's ``Run.cancel`` ignores the service's answer).

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
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PORTAL_SCHEME",
    "SNAPSHOT_MAX_BYTES",
    "SNAPSHOT_MAX_FILES",
    "ComputeTarget",
    "ComputeTargetException",
    "Experiment",
    "ExperimentExecutionException",
    "Run",
    "RunAlreadyExists",
    "RunNotFound",
    "RunSpec",
    "ServiceException",
    "SnapshotException",
    "StandinError",
    "StandinSettings",
    "Workspace",
    "create_run",
    "inject_fault",
]

log = logging.getLogger("tunebus.submitter.aml.standin")

#: Portal URLs of stand-in runs start with this: they are not Azure's.
PORTAL_SCHEME = "standin://"
_TERMINAL = ("Completed", "Failed", "Canceled")
_TAIL_CHARS = 3000
_POLL = 0.05


#: The SDK's snapshot limits (azureml-core 1.61, ``_restclient/constants.py``).
SNAPSHOT_MAX_FILES = 2000
SNAPSHOT_MAX_BYTES = 300 * 1024 * 1024
#: The folders a known image puts on PATH after its own (a minimal image's).
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
FAULT_CALLS = ("submit", "tags", "get", "cancel")


class StandinError(Exception):
    """An error of the stand-in's 'service' (the base of the SDK-shaped ones below)."""


class ServiceException(StandinError):
    """Shaped like azureml's run-history ``ServiceException``: the HTTP status as ``status_code``."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(f"ServiceException:\n\tCode: {status_code}\n\tMessage: {message}")
        self.status_code = status_code


class RunNotFound(ServiceException):
    """No run with that id in the registry (AML: 404)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"Run {run_id} not found", 404)


class ExperimentExecutionException(StandinError):
    """Shaped like azureml's: the HTTP status only inside a JSON message, no attribute."""

    def __init__(self, status: int, message: str, url: str = "standin://not-azure/execution") -> None:
        super().__init__(json.dumps({"error_details": {"error": {"message": message}},
                                     "status_code": status, "url": url}, indent=4, sort_keys=True))


class RunAlreadyExists(ExperimentExecutionException):
    """A run with that id exists already (AML: 409 Conflict, inside the message)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(409, f"Run {run_id} already exists")


class ComputeTargetException(StandinError):
    """Shaped like azureml's: a missing cluster has no status, a service error has one in the text."""


class SnapshotException(StandinError):
    """The snapshot is over the SDK's limits (file count or size)."""


@dataclass(frozen=True)
class StandinSettings:
    """Where the run registry lives, what exists in the 'workspace', how slow it is (seconds)."""

    registry: Path
    submit_latency: float = 0.0
    queue_delay: float = 0.0
    prepare_delay: float = 0.0
    computes: tuple[str, ...] = ("cpu-cluster", "gpu-cluster")
    images: tuple[str, ...] = ("msranni/nni",)
    # The bin folder a known image's python lives in: this machine's interpreter stands in.
    image_bin: str = field(default_factory=lambda: os.path.dirname(sys.executable))
    # How runs are sandboxed like local trials (the submitter's sandbox, see ../sandbox.py):
    # "prefix" (setpriv argv), "owner" ([uid, gid] the run folder is given to, or None),
    # "path_first" (interpreter folder), "pythonpath" (extra entries), "allowed" (variable names
    # passed from this environment, besides LC_*). Empty: no sandbox (unit tests of the stand-in).
    sandbox: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- injected faults


@contextlib.contextmanager
def _faults_file(registry: Path) -> Iterator[Path]:
    """The registry's fault list, locked (replicas in other processes share it)."""
    registry.mkdir(parents=True, exist_ok=True)
    path = registry / "faults.json"
    with (registry / ".faults.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def inject_fault(registry: Path, call: str, status: int = 503, times: int = 1) -> None:
    """Make the next ``times`` calls of ``call`` fail with HTTP ``status`` (a cancel: do nothing).

    ``call``: ``submit`` (before the run exists), ``tags`` (after it exists), ``get`` or ``cancel``.
    """
    if call not in FAULT_CALLS:
        raise ValueError(f"unknown call {call!r}: one of {', '.join(FAULT_CALLS)}")
    with _faults_file(registry) as path:
        faults = json.loads(path.read_text()) if path.exists() else []
        faults += [{"call": call, "status": status}] * times
        _write_json_list(path, faults)


def _take_fault(registry: Path, call: str) -> int | None:
    """The status of the next fault injected for ``call`` (and forget it), or None."""
    if not (registry / "faults.json").exists():
        return None
    with _faults_file(registry) as path:
        faults = json.loads(path.read_text()) if path.exists() else []
        for i, fault in enumerate(faults):
            if fault["call"] == call:
                del faults[i]
                _write_json_list(path, faults)
                return int(fault["status"])
    return None


def _write_json_list(path: Path, items: list[Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(items))
    os.replace(tmp, path)


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
    """Stands in for ``azureml.core.compute.ComputeTarget``: the names in ``settings.computes`` exist."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        if name not in workspace.settings.computes:
            raise ComputeTargetException(f"ComputeTargetNotFound: Compute Target with name {name} not found "
                                         f"in provided workspace")
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
        status = _take_fault(settings.registry, "submit")
        if status is not None:
            raise ExperimentExecutionException(status, "injected fault: the run was not created")
        run_id = run_id or f"{self.name}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
        run_config = config.run_config
        create_run(settings, RunSpec(
            run_id=run_id, experiment=self.name, workspace=self.workspace.name, target=str(run_config.target),
            image=run_config.environment.docker.base_image,
            command=config.command if isinstance(config.command, str) else " ".join(config.command),
            environment_variables=dict(run_config.environment_variables or {}),
            max_run_duration_seconds=run_config.max_run_duration_seconds,
        ), Path(config.source_directory))
        time.sleep(max(0.0, settings.submit_latency - (time.monotonic() - started)))
        run = Run(self, run_id)
        # azureml-core sets tags by a separate call once the run exists: it can fail after that.
        status = _take_fault(settings.registry, "tags")
        if status is not None:
            raise ServiceException("injected fault: setting the tags failed (the run exists)", status)
        run.set_tags(dict(tags or {}))
        return run


@dataclass(frozen=True)
class RunSpec:
    """What a run is made of, as the SDK sends it (v1's ScriptRunConfig, v2's command job)."""

    run_id: str
    experiment: str
    workspace: str
    target: str
    image: str
    command: str
    environment_variables: dict[str, str]
    max_run_duration_seconds: int | None


def create_run(settings: StandinSettings, spec: RunSpec, source: Path) -> None:
    """Make the run: its folder, the snapshot copy (the SDK's rules), its spec, its runner process.

    :class:`RunAlreadyExists` if the id is taken, :class:`SnapshotException` over the limits.
    """
    folder = settings.registry / spec.run_id
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise RunAlreadyExists(spec.run_id) from None
    try:
        _copy_snapshot(source, folder / "wd")
    except SnapshotException:
        shutil.rmtree(folder, ignore_errors=True)  # AML refuses before it creates the run
        raise
    document = {**asdict(spec), "image_known": spec.image in settings.images, "image_bin": settings.image_bin,
                "delays": {"queue": settings.queue_delay, "prepare": settings.prepare_delay},
                "sandbox": settings.sandbox}
    _write_json(folder / "spec.json", document)
    _write_json(folder / "tags.json", {})
    _write_json(folder / "state.json", {"status": "NotStarted", "runner_pid": None, "error": None,
                                        "submitted": time.time()})
    owner = settings.sandbox.get("owner")
    if owner:  # the run's folder is the trial's (it writes ./outputs), as a job's is on AML
        for path in (folder / "wd", *(folder / "wd").rglob("*")):
            os.chown(path, owner[0], owner[1], follow_symlinks=False)
    with (folder / "runner.log").open("ab") as out:
        runner = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "run", str(folder)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_minimal_env(),
            start_new_session=True,  # the run outlives the replica, as an AML run does
        )
    # The runner writes its pid into state.json once it runs; until then this tells it.
    _write_json(folder / "starter.json", {"runner_pid": runner.pid})


def _minimal_env() -> dict[str, str]:
    """What the runner process itself gets: nothing of the submitter's settings or credentials."""
    return {"PATH": _BASE_PATH, "LANG": "C.UTF-8"}


def _copy_snapshot(source: Path, dest: Path) -> None:
    """Copy as the SDK snapshots: links followed, modes dropped, within its file and size limits."""
    files: list[tuple[Path, Path]] = []
    total = 0
    for dirpath, _dirnames, filenames in os.walk(source, followlinks=True):
        for name in filenames:
            path = Path(dirpath) / name
            files.append((path, dest / path.relative_to(source)))
            total += path.stat().st_size
    if len(files) > SNAPSHOT_MAX_FILES:
        raise SnapshotException(f"While attempting to take snapshot of {source}\n"
                                f"Your project exceeds the file limit of {SNAPSHOT_MAX_FILES}.")
    if total > SNAPSHOT_MAX_BYTES:
        raise SnapshotException(f"While attempting to take snapshot of {source}\nYour total snapshot size "
                                f"exceeds the limit of {SNAPSHOT_MAX_BYTES / (1024 * 1024):.1f} MB.")
    dest.mkdir(parents=True)
    for path, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # content only: no mode, no link
        target.chmod(0o644)


class Run:
    """Stands in for ``azureml.core.Run``: status, details, portal URL and cancel from the registry."""

    def __init__(self, experiment: Experiment, run_id: str) -> None:
        self.experiment = experiment
        self.id = run_id
        self._folder = experiment.workspace.settings.registry / run_id

    @staticmethod
    def get(workspace: Workspace, run_id: str) -> Run:
        """The run with that id (any replica's), or :class:`RunNotFound`."""
        status = _take_fault(workspace.settings.registry, "get")
        if status is not None:
            raise ServiceException("injected fault", status)
        folder = workspace.settings.registry / run_id
        if not (folder / "spec.json").exists():
            raise RunNotFound(run_id)
        spec = _read_json(folder / "spec.json")
        return Run(Experiment(workspace, spec["experiment"]), run_id)

    def _state(self) -> dict[str, Any]:
        try:
            return _read_json(self._folder / "state.json")
        except FileNotFoundError:
            raise RunNotFound(self.id) from None

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
            "tags": self.get_tags(),
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

    def get_tags(self) -> dict[str, str]:
        """The run's tags (set after the run exists: empty until then)."""
        try:
            return {str(k): str(v) for k, v in _read_json(self._folder / "tags.json").items()}
        except FileNotFoundError:
            return {}

    def set_tags(self, tags: dict[str, str]) -> None:
        """Add or replace tags, as ``Run.set_tags`` does."""
        _write_json(self._folder / "tags.json", {**self.get_tags(), **tags})

    def cancel(self) -> None:
        """Ask the run to stop: CancelRequested, then Canceled once its command is gone.

        Like azureml-core's, it returns nothing whatever the service answered: an injected
        ``cancel`` fault makes it do nothing at all, silently.
        """
        state = self._state()
        if state["status"] in _TERMINAL:
            return
        if _take_fault(self.experiment.workspace.settings.registry, "cancel") is not None:
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
        # Only what the image and the job give, as in an AML container: never the host's. A
        # sandboxed run (as local trials are) gets an interpreter its user can run, and its folder.
        sandbox = self.spec.get("sandbox") or {}
        interpreter = sandbox.get("path_first") or self.spec["image_bin"]
        home = self.folder / "wd" if sandbox.get("owner") else self.folder
        env = {"PATH": f"{interpreter}{os.pathsep}{_BASE_PATH}", "HOME": str(home),
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
        sys.exit("usage: standin.py run RUN_FOLDER")
    _Runner(Path(sys.argv[2])).main()
