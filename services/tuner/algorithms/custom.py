"""Custom tuners, as NNI loads them: ``className`` ("module.Class") found in ``codeDirectory``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import NoMoreTrials, TunerConfigError

__all__ = ["CustomTuner", "load_custom_tuner"]

REQUIRED_METHODS = ("update_search_space", "generate_parameters", "receive_trial_result")


def load_custom_tuner(
    class_name: str, code_directory: str | None, class_args: Mapping[str, Any]
) -> CustomTuner:
    """Import ``class_name`` with ``code_directory`` on the import path and build it from classArgs."""
    module_name, _, attribute = class_name.rpartition(".")
    if not module_name or not attribute:
        raise TunerConfigError(class_name, "className must look like 'module.ClassName'")
    if code_directory is not None and not Path(code_directory).is_dir():
        raise TunerConfigError(class_name, f"codeDirectory {code_directory!r} is not a directory")
    try:
        module = _import(module_name, code_directory)
        cls = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise TunerConfigError(class_name, f"cannot load the class: {exc}") from exc
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise TunerConfigError(class_name, f"a tuner must implement {', '.join(missing)}")
    try:
        instance = cls(**dict(class_args))
    except TypeError as exc:  # unknown or missing keyword arguments
        raise TunerConfigError(class_name, f"classArgs do not fit the constructor: {exc}") from exc
    return CustomTuner(instance)


def _import(module_name: str, code_directory: str | None) -> Any:
    """Import like NNI (code directory first on sys.path), then restore sys.path."""
    if code_directory is None:
        return importlib.import_module(module_name)
    directory = str(Path(code_directory).resolve())
    sys.path.insert(0, directory)
    try:
        importlib.invalidate_caches()
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(directory)


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
