"""Untrusted code as a sandboxed process: local trials, and custom algorithms' workers.

Details: :class:`Sandbox`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALWAYS_PASSED",
    "DEFAULT_TRIAL_USER",
    "Sandbox",
    "SandboxError",
    "TrialUser",
    "allowlisted_environment",
    "make_non_dumpable",
]

log = logging.getLogger("tunebus.sandbox")

#: Submitter variables every trial gets (besides ``LC_*``).
ALWAYS_PASSED = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "CUDA_VISIBLE_DEVICES")
DEFAULT_TRIAL_USER = "tunebus-trial"
_PR_SET_DUMPABLE = 4
_SETPRIV = shutil.which("setpriv")


class SandboxError(RuntimeError):
    """Trials cannot be run safely as configured; the message says why and what to do."""


def allowlisted_environment(source: Mapping[str, str], passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The part of ``source`` a trial may see: :data:`ALWAYS_PASSED`, ``LC_*`` and ``passthrough``."""
    wanted = set(ALWAYS_PASSED) | {name.strip() for name in passthrough if name.strip()}
    return {k: v for k, v in source.items() if k in wanted or k.startswith("LC_")}


def make_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): this process's /proc files (environ, mem) become root's and no
    process of its user may ptrace it. False where that is not possible (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class TrialUser:
    """The unprivileged account trials run as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> TrialUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SandboxError(
                f"the trial user {name!r} does not exist, and trials never run as root: create it "
                f"(`deploy/local install` does: useradd --system --no-create-home {name}) or name "
                "another with TUNEBUS_TRIAL_USER") from None
        if entry.pw_uid == 0:
            raise SandboxError(f"the trial user {name!r} is root (uid 0): trials never run as root")
        return cls(name, entry.pw_uid, entry.pw_gid)

    def setpriv(self) -> list[str]:
        """The ``setpriv`` prefix that runs a command as this user, with no way back to root."""
        assert _SETPRIV is not None
        return [_SETPRIV, f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--no-new-privs",
                "--pdeathsig", "KILL", "--"]


def _bridge_venv(folder: Path, interpreter: Path, version: str) -> Path:
    """A venv in ``folder`` on ``interpreter`` whose site-packages lead to this venv's; its bin.

    Asked for at every start of a worker or trial, by any number of them at once (and by other
    services sharing the folder): a bridge already right is used untouched, and a new one is built
    beside it and renamed into place whole, so no start ever finds it half made.
    """
    files = _bridge_files(version)
    for _ in range(5):  # a concurrent builder may move it between two of these steps: look again
        if _bridge_is(folder, interpreter, files):
            return folder / "bin"
        partial = folder.with_name(f"{folder.name}.{uuid.uuid4().hex}.partial")
        _write_bridge(partial, interpreter, version, files)
        try:
            os.rename(partial, folder)  # atomic, over a missing or empty folder only
            return folder / "bin"
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
        if not _bridge_is(folder, interpreter, files):  # an older bridge: set it aside, then retry
            with contextlib.suppress(OSError):
                stale = folder.with_name(f"{folder.name}.{uuid.uuid4().hex}.stale")
                os.rename(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
    raise SandboxError(f"could not build the trial interpreter's folder {folder}: it kept changing")


def _bridge_files(version: str) -> dict[str, str]:
    paths = sysconfig.get_paths()
    packages = dict.fromkeys([paths["purelib"], paths["platlib"]])
    # addsitedir, not bare paths: the venv's own .pth files run too, so an editable install of
    # tunebus (deploy/local's) imports from a trial as it does from the venv's interpreter.
    lines = [f"import site; site.addsitedir({path!r})\n" for path in packages]
    return {f"lib/{version}/site-packages/tunebus-venv.pth": "".join(lines)}


def _bridge_is(folder: Path, interpreter: Path, files: dict[str, str]) -> bool:
    """Whether ``folder`` is a whole bridge to ``interpreter`` with these files."""
    try:
        return ((folder / "bin" / "python3").readlink() == interpreter
                and all((folder / name).read_text() == text for name, text in files.items())
                and (folder / "pyvenv.cfg").is_file())
    except OSError:
        return False


def _write_bridge(folder: Path, interpreter: Path, version: str, files: dict[str, str]) -> None:
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text(f"home = {interpreter.parent}\ninclude-system-site-packages = false\n"
                                       f"version = {version.removeprefix('python')}\n")
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    for name in ("python", "python3", version):
        (folder / "bin" / name).symlink_to(interpreter)
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


@dataclass(frozen=True)
class Sandbox:
    """How this submitter runs local trials.

    An allowlisted environment, an unprivileged user, no new privileges (the trial user serves both).

    * **Environment**: a trial gets NNI's and its own variables (added by the backend), and from
      the submitter's environment only :data:`ALWAYS_PASSED` (plus ``LC_*``) and the names a
      deployment lists in ``TUNEBUS_TRIAL_ENV_PASSTHROUGH``. No service setting, storage key,
      broker password or cloud credential reaches it.
    * **User**: a submitter running as root starts each trial as the trial user (default
      ``tunebus-trial``, which ``deploy/local install`` and the image create) through util-linux's
      ``setpriv`` (``--reuid/--regid/--init-groups``), with ``--no-new-privs``; the trial's output
      folder is chowned to that user and is its ``HOME``. Root with no such user runs no trial.
      A submitter that is not root cannot switch users: trials run as its own user, with the
      allowlisted environment, and the submitter is non-dumpable (:func:`make_non_dumpable`), so
      a trial reads neither its ``/proc/<pid>/environ`` nor its memory.
    * **Interpreter**: trials find the submitter's venv first on PATH. When the trial user cannot
      run that interpreter (a pyenv Python under a private ``/root``, as on some dev machines), a
      system interpreter of the same version is used with the venv's site-packages on its path
      (:func:`trial_interpreter`); with none, trials are refused, saying why.
    """

    user: TrialUser | None  # None: as the submitter's own (non-root) user
    passthrough: tuple[str, ...] = ()

    @classmethod
    def for_this_process(cls, trial_user: str = DEFAULT_TRIAL_USER,
                         passthrough: Iterable[str] = ()) -> Sandbox:
        """Root switches to ``trial_user`` (which must exist); anyone else runs trials as itself."""
        names = tuple(n.strip() for n in passthrough if n.strip())
        if os.geteuid() != 0:
            return cls(None, names)
        if _SETPRIV is None:
            raise SandboxError("util-linux's setpriv is missing: a root submitter cannot drop privileges "
                               "for its trials (install util-linux)")
        return cls(TrialUser.lookup(trial_user), names)

    def prefix(self) -> list[str]:
        """What goes before ``/bin/sh -c <command>``."""
        if self.user is not None:
            return self.user.setpriv()
        if _SETPRIV is not None:
            return [_SETPRIV, "--no-new-privs", "--pdeathsig", "KILL", "--"]
        return []

    def can_run(self, executable: Path) -> bool:
        """Whether a trial can start ``executable`` (the trial user may lack search permission).

        Through ``/bin/sh`` as trials do: setpriv itself still holds root's capabilities when it
        execs its command, so ``setpriv ... python`` would start where the trial's shell cannot.
        """
        probe = 'exec "$0" -c "import sys; sys.exit(sys.prefix == sys.base_prefix)"'  # a venv's own
        try:
            done = subprocess.run([*self.prefix(), "/bin/sh", "-c", probe, str(executable)], env={}, cwd="/",
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def _runs_plain(self, executable: Path) -> bool:
        """Whether the trial user can start ``executable`` (an interpreter that is no venv's)."""
        try:
            done = subprocess.run([*self.prefix(), "/bin/sh", "-c", 'exec "$0" -c ""', str(executable)],
                                  env={}, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def trial_interpreter(self, venv_bin: Path, spare_dir: Path) -> tuple[Path, list[str]]:
        """The folder to put first on a trial's PATH, and extra PYTHONPATH entries.

        The venv's own interpreter when the trial can run it; else a system interpreter of the
        same version (same ABI: the venv's packages import), as a small venv in ``spare_dir``
        whose site-packages point at the venv's. A venv, not PYTHONPATH: the system's own
        dist-packages (and the imports its .pth files make: benchmarks/README_startup.md) stay
        out, as in the venv.
        """
        if self.user is None or self.can_run(venv_bin / "python3"):
            return venv_bin, []
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
            candidate = Path(folder) / version
            if candidate.exists() and self._runs_plain(candidate):
                bridge = _bridge_venv(spare_dir, candidate, version)
                log.warning("the trial user %s cannot run %s (a folder on its path is private): trials run "
                            "%s in %s, with the venv's packages", self.user.name, venv_bin / "python3",
                            candidate, spare_dir)
                return bridge, []
        raise SandboxError(
            f"the trial user {self.user.name!r} can run neither {venv_bin / 'python3'} nor a system "
            f"{version}: make the venv's interpreter readable by it (a world-searchable path)")

    def hand_over(self, folder: Path) -> None:
        """Give the trial's output folder to the trial user (it writes there, and only there).

        SandboxError names a folder above it that the trial user cannot pass through.
        """
        if self.user is None:
            return
        for above in folder.resolve().parents:
            mode = above.stat().st_mode
            if not mode & 0o001 and above.stat().st_uid != self.user.uid:
                raise SandboxError(f"the trial user {self.user.name!r} cannot reach its work folder: {above} "
                                   "is not searchable by others (give the submitter a work dir "
                                   "outside private folders, TUNEBUS_WORK_DIR)")
        os.chown(folder, self.user.uid, self.user.gid)
        os.chmod(folder, 0o700)
