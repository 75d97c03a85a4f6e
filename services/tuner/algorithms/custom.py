"""Custom tuners, as NNI loads them: ``className`` ("module.Class") found in ``codeDirectory``.

Unlike NNI, which starts one process per experiment, one tuner process serves every
experiment, so each load is isolated: the code directory is first on the import path only
while its module is imported (its sibling modules import as NNI users expect, ``import helper``
next to ``my_tuner.py``), and what was imported from it is then taken out of ``sys.modules``.
A second experiment whose module has the same name therefore runs its own code, not the first
one's, and an installed package of the same name is not shadowed for anyone else afterwards.
The loaded modules live as long as the experiment's tuner object refers to them.

Caveat: a module the user's code imports *later* (inside a method, not at import time) is
looked up on the ordinary path, as the code directory is no longer on it.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import NoMoreTrials, TunerConfigError

__all__ = ["CustomTuner", "load_custom_class", "load_custom_tuner"]

REQUIRED_METHODS = ("update_search_space", "generate_parameters", "receive_trial_result")
#: How long a load waits for another one (the import path and module table are process-wide).
IMPORT_LOCK_TIMEOUT = 60.0
#: Entries of a code directory looked at for module names (a huge folder is not listed whole).
MAX_DIRECTORY_ENTRIES = 10_000

_import_lock = threading.Lock()


def load_custom_tuner(
    class_name: str, code_directory: str | None, class_args: Mapping[str, Any]
) -> CustomTuner:
    """Import ``class_name`` from ``code_directory`` (isolated, see the module docstring) and
    build it from classArgs."""
    return CustomTuner(load_custom_class(class_name, code_directory, class_args, REQUIRED_METHODS,
                                         TunerConfigError))


def load_custom_class(
    class_name: str,
    code_directory: str | None,
    class_args: Mapping[str, Any],
    required: Sequence[str],
    error: Callable[[str, str], Exception],
) -> Any:
    """Import ``class_name`` ("module.Class") from ``code_directory``, check it has the
    ``required`` methods and construct it with ``class_args``; ``error(class_name, reason)``
    is raised for anything the user must fix in the config."""
    module_name, _, attribute = class_name.rpartition(".")
    if not module_name or not attribute:
        raise error(class_name, "className must look like 'module.ClassName'")
    if code_directory is not None and not Path(code_directory).is_dir():
        raise error(class_name, f"codeDirectory {code_directory!r} is not a directory")
    try:
        module = _import(module_name, code_directory)
        cls = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise error(class_name, f"cannot load the class: {exc}") from exc
    missing = [m for m in required if not callable(getattr(cls, m, None))]
    if missing:
        raise error(class_name, f"must implement {', '.join(missing)}")
    try:
        return cls(**dict(class_args))
    except TypeError as exc:  # unknown or missing keyword arguments
        raise error(class_name, f"classArgs do not fit the constructor: {exc}") from exc


def _import(module_name: str, code_directory: str | None) -> ModuleType:
    if code_directory is None:
        return importlib.import_module(module_name)
    directory = str(Path(code_directory).resolve())
    own = _module_names(directory) | {module_name.partition(".")[0]}
    if not _import_lock.acquire(timeout=IMPORT_LOCK_TIMEOUT):
        raise ImportError("another custom algorithm's import has not finished (is it hanging?)")
    try:
        return _import_isolated(module_name, directory, own)
    finally:
        _import_lock.release()


def _import_isolated(module_name: str, directory: str, own: set[str]) -> ModuleType:
    """Import with ``directory`` first on the path and its modules (``own`` top-level names)
    fresh; afterwards the path and the module table are as they were."""
    def ours(name: str) -> bool:
        return name.partition(".")[0] in own

    hidden = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in hidden:
        del sys.modules[name]
    sys.path.insert(0, directory)
    try:
        importlib.invalidate_caches()
        return importlib.import_module(module_name)
    finally:
        if directory in sys.path:  # the user's code may have removed it itself
            sys.path.remove(directory)
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(hidden)


def _module_names(directory: str) -> set[str]:
    """Top-level module names the directory provides: ``x.py`` and packages ``x/``."""
    names: set[str] = set()
    for count, entry in enumerate(Path(directory).iterdir()):
        if count >= MAX_DIRECTORY_ENTRIES:
            break
        name = entry.stem if entry.suffix == ".py" else entry.name
        if name.isidentifier() and (entry.suffix == ".py" or entry.is_dir()):
            names.add(name)
    return names


class CustomTuner:
    """A user's tuner object, with NNI's default behaviour for the optional methods it lacks."""

    def __init__(self, tuner: Any) -> None:
        self.tuner = tuner

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        """Forwarded to the user's tuner."""
        self.tuner.update_search_space(search_space)

    def generate_parameters(self, parameter_id: Any, **kwargs: Any) -> Any:
        """Forwarded; NNI's ``NoMoreTrialError`` (by name, NNI need not be installed) becomes NoMoreTrials."""
        try:
            return self.tuner.generate_parameters(parameter_id, **kwargs)
        except Exception as exc:
            if type(exc).__name__ in ("NoMoreTrialError", "NoMoreTrials"):
                raise NoMoreTrials(str(exc)) from exc
            raise

    def generate_multiple_parameters(self, parameter_id_list: Sequence[Any], **kwargs: Any) -> list[Any]:
        """The user's own version if it has one, else one call per id until the space is exhausted."""
        own = getattr(self.tuner, "generate_multiple_parameters", None)
        if callable(own):
            return list(own(parameter_id_list, **kwargs))
        out = []
        for parameter_id in parameter_id_list:
            try:
                out.append(self.generate_parameters(parameter_id, **kwargs))
            except NoMoreTrials:
                break
        return out

    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None:
        """Forwarded to the user's tuner."""
        self.tuner.receive_trial_result(parameter_id, parameters, value, **kwargs)

    def trial_end(self, parameter_id: Any, success: bool, **kwargs: Any) -> None:
        """Forwarded if the user's tuner has it (NNI's default does nothing)."""
        method = getattr(self.tuner, "trial_end", None)
        if callable(method):
            method(parameter_id, success, **kwargs)

    def import_data(self, data: Iterable[Mapping[str, Any]]) -> None:
        """Forwarded if the user's tuner has it (NNI's default ignores the data)."""
        method = getattr(self.tuner, "import_data", None)
        if callable(method):
            method(list(data))
