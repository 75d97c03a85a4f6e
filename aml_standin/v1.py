"""NOT AZURE. A local stand-in for Azure ML's workspace / experiment / run boundary (azureml-core,
SDK v1), for tests; selected only by the submitter's ``TUNEBUS_AML_STANDIN=1``, and it logs a
WARNING at start and at every submission saying so.

It replaces exactly the objects the AML backend talks to (``Workspace``, ``ComputeTarget``,
``Experiment``, ``Run``) with the same constructor and method names, strict where AML is;
:class:`Experiment` says what it does to a submission. The run process is
:mod:`aml_standin.runner`; the SDK-shaped errors are in :mod:`aml_standin.errors`, the
injected faults in :mod:`aml_standin.faults`.
"""

from __future__ import annotations

import contextlib
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

from aml_standin import runner as runner_module
from aml_standin.errors import (
    ComputeTargetException,
    ExperimentExecutionException,
    RunAlreadyExists,
    RunNotFound,
    ServiceException,
    SnapshotException,
    StandinError,
)
from aml_standin.faults import inject_fault, take_fault
from aml_standin.runner import BASE_PATH, read_json, write_json

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


#: The SDK's snapshot limits (azureml-core 1.61, ``_restclient/constants.py``).
SNAPSHOT_MAX_FILES = 2000
SNAPSHOT_MAX_BYTES = 300 * 1024 * 1024


@dataclass(frozen=True)
class StandinSettings:
    """Where the run registry lives, what exists in the 'workspace', how slow it is (seconds).

    ``submit_latency`` is how long the blocking ``submit`` call takes in all (azureml-core's
    takes about a second); ``queue_delay`` and ``prepare_delay`` how long a run stays Queued and
    Preparing: the submitter's ``TUNEBUS_AML_STANDIN_*`` settings. An image not in ``images``
    fails its run at Preparing (AML cannot pull it); a known image is this machine's Python.
    """

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
    """Stands in for ``azureml.core.Experiment``: ``submit`` starts a local runner process.

    ``submit`` copies the config's snapshot (``source_directory``) to a run folder by the SDK's
    rules (:func:`create_run`) and starts :mod:`aml_standin.runner` there, which walks the run
    through AML's statuses and runs the config's ``command``. Errors have the SDK's shapes
    (:mod:`aml_standin.errors`); tags are set by a call after the run exists, as azureml-core
    does; faults can be injected before and after the run exists (:func:`inject_fault`).
    """

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
        status = take_fault(settings.registry, "submit")
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
        status = take_fault(settings.registry, "tags")
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

    The SDK's rules: at most 2,000 files and 300 MB, symbolic links followed, file modes not
    kept (an executable bit does not survive, as in an AML snapshot).

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
    write_json(folder / "spec.json", document)
    write_json(folder / "tags.json", {})
    write_json(folder / "state.json", {"status": "NotStarted", "runner_pid": None, "error": None,
                                        "submitted": time.time()})
    owner = settings.sandbox.get("owner")
    if owner:  # the run's folder is the trial's (it writes ./outputs), as a job's is on AML
        for path in (folder / "wd", *(folder / "wd").rglob("*")):
            os.chown(path, owner[0], owner[1], follow_symlinks=False)
    with (folder / "runner.log").open("ab") as out:
        runner = subprocess.Popen(
            [sys.executable, os.path.abspath(runner_module.__file__), "run", str(folder)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_minimal_env(),
            start_new_session=True,  # the run outlives the replica, as an AML run does
        )
    # The runner writes its pid into state.json once it runs; until then this tells it.
    write_json(folder / "starter.json", {"runner_pid": runner.pid})


def _minimal_env() -> dict[str, str]:
    """What the runner process itself gets: nothing of the submitter's settings or credentials."""
    return {"PATH": BASE_PATH, "LANG": "C.UTF-8"}


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
    """Stands in for ``azureml.core.Run``: status, details, portal URL and cancel from the registry.

    Runs outlive the replica that submitted them, as AML runs do: each run is a folder under the
    *registry* directory (``state.json`` with the runner's pid, the snapshot copy, logs), and any
    replica reads a run's status from there. The limitation, plainly: the registry is a local
    folder, so replicas must share this machine's filesystem (or the folder on a shared mount).
    A run whose runner process died (the machine rebooted) reports ``NotResponding``, as AML
    does for a node it lost.
    """

    def __init__(self, experiment: Experiment, run_id: str) -> None:
        self.experiment = experiment
        self.id = run_id
        self._folder = experiment.workspace.settings.registry / run_id

    @staticmethod
    def get(workspace: Workspace, run_id: str) -> Run:
        """The run with that id (any replica's), or :class:`RunNotFound`."""
        status = take_fault(workspace.settings.registry, "get")
        if status is not None:
            raise ServiceException("injected fault", status)
        folder = workspace.settings.registry / run_id
        if not (folder / "spec.json").exists():
            raise RunNotFound(run_id)
        spec = read_json(folder / "spec.json")
        return Run(Experiment(workspace, spec["experiment"]), run_id)

    def _state(self) -> dict[str, Any]:
        try:
            return read_json(self._folder / "state.json")
        except FileNotFoundError:
            raise RunNotFound(self.id) from None

    def _runner_pid(self, state: dict[str, Any]) -> int | None:
        pid = state.get("runner_pid")
        if pid is None and (self._folder / "starter.json").exists():
            pid = read_json(self._folder / "starter.json").get("runner_pid")
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
        spec = read_json(self._folder / "spec.json")
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
            return {str(k): str(v) for k, v in read_json(self._folder / "tags.json").items()}
        except FileNotFoundError:
            return {}

    def set_tags(self, tags: dict[str, str]) -> None:
        """Add or replace tags, as ``Run.set_tags`` does."""
        write_json(self._folder / "tags.json", {**self.get_tags(), **tags})

    def cancel(self) -> None:
        """Ask the run to stop: CancelRequested, then Canceled once its command is gone.

        Like azureml-core's, it returns nothing whatever the service answered: an injected
        ``cancel`` fault makes it do nothing at all, silently.
        """
        state = self._state()
        if state["status"] in _TERMINAL:
            return
        if take_fault(self.experiment.workspace.settings.registry, "cancel") is not None:
            return
        (self._folder / "cancel").write_text(str(time.time()))
        # The runner watches for that file; a signal makes it quicker, once the runner has
        # said (by writing its pid) that it is ready for one.
        pid = state.get("runner_pid")
        if pid and _pid_alive(int(pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGTERM)
