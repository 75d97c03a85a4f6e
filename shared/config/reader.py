"""Reading the user's document: NNI's key spellings folded, sections placed, every problem at once."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from shared.errors import ConfigError
from shared.search_space import SearchSpaceError
from shared.secrets_mask import is_secret_name

from .experiment import ExperimentConfig
from .fields import SUPPORTED_PLATFORMS, join_path
from .sections import PLATFORMS, AlgorithmConfig, AzureBlobConfig, LocalConfig

Loc = tuple[str | int, ...]

# Training-service fields NNI also accepts at the top level; here the top level holds them.
_SHORTCUTS = ("trial_command", "trial_code_directory", "trial_gpu_number", "nni_manager_ip", "debug")
# Keys that belong under trainingService, for a helpful message when found at the top.
_TRAINING_SERVICE_ONLY = {"platform", "useactivegpu", "maxtrialnumberpergpu", "gpuindices", "reusemode"}
# Values under these keys may use ${VAR} legitimately (shell commands, free-form data).
_FREE_FORM = {"trialcommand", "classargs", "searchspace"}
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def _fold(key: str) -> str:
    """NNI's key matching: case and underscores do not matter."""
    return key.lower().replace("_", "")


@dataclass
class _Reader:
    """Turns the user's document into dicts keyed by field name, remembering the user's spelling.

    ``spelling`` maps a field location (``("training_service", "subscription_id")``) to the
    path as the user wrote it (``trainingService.subscription_id``). A section the reader
    could not make sense of is reported once and left out; ``dropped`` keeps pydantic from
    reporting it again as missing.
    """

    problems: list[tuple[str, str]] = field(default_factory=list)
    spelling: dict[Loc, str] = field(default_factory=dict)
    dropped: set[Loc] = field(default_factory=set)

    def user_path(self, loc: Loc) -> str:
        """The user's spelling of ``loc``; parts the user did not write are camelCased."""
        for cut in range(len(loc), -1, -1):
            path = self.spelling.get(loc[:cut])
            if path is not None:
                break
        else:
            path, cut = "", 0
        for part in loc[cut:]:
            path = join_path(path, part if isinstance(part, int) else to_camel(part))
        return path

    def fail(self, section: dict[str, Any], loc: Loc, reason: str, at: str | None = None) -> None:
        """Report a problem with ``loc`` (at the user path ``at`` if given) and drop the field."""
        self.problems.append((at or self.user_path(loc), reason))
        self.dropped.add(loc)
        section.pop(str(loc[-1]), None)

    def rename(
        self,
        data: Mapping[Any, Any],
        fields: list[str],
        loc: Loc,
        path: str,
        hints: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Key ``data`` by field name; unknown and repeated keys are reported and left out."""
        hints = hints or {}
        by_fold = {_fold(name): name for name in fields}
        out: dict[str, Any] = {}
        for key, value in data.items():
            key_path = join_path(path, str(key))
            name = by_fold.get(_fold(key)) if isinstance(key, str) else None
            if name is None:
                hint = hints.get(_fold(key), "") if isinstance(key, str) else ""
                self.problems.append((key_path, f"unknown key{hint}"))
            elif name in out:
                self.problems.append((key_path, f"given twice (also as {self.spelling[(*loc, name)]})"))
            else:
                out[name] = value
                self.spelling[(*loc, name)] = key_path
        return out


def _read_document(data: Mapping[Any, Any], base_dir: Path | None) -> tuple[dict[str, Any], _Reader]:
    reader = _Reader()
    reader.problems.extend(_placeholder_problems(data, "", free_form=False))
    hints = {key: " (it belongs under trainingService)" for key in _TRAINING_SERVICE_ONLY}
    names = [*ExperimentConfig.model_fields, "search_space_file", "advisor"]
    top = reader.rename(data, names, (), "", hints)
    _read_algorithms(top, reader)
    _read_training_service(top, reader)
    _read_shared_storage(top, reader)
    _read_search_space(top, reader, base_dir)
    return top, reader


def _read_algorithms(top: dict[str, Any], reader: _Reader) -> None:
    # NNI reads the deprecated `advisor` as the tuner, and refuses both at once.
    if "advisor" in top:
        advisor = top["advisor"]
        custom = isinstance(advisor, Mapping) and any(isinstance(k, str) and _fold(k) == "classname"
                                                      for k in advisor)
        if custom:
            reader.fail(top, ("advisor",), "a custom advisor (className) is not supported: tunebus has no "
                        "advisor interface; write a tuner (nni.tuner.Tuner) and, for early stopping, an "
                        "assessor (nni.assessor.Assessor)")
            reader.dropped.add(("tuner",))  # the advisor stood for the tuner: no second "required"
        elif "tuner" in top:
            reader.fail(top, ("advisor",), "set tuner or advisor (deprecated), not both")
        else:
            top["tuner"] = top.pop("advisor")
            reader.spelling[("tuner",)] = reader.spelling.pop(("advisor",))
    for name in ("tuner", "assessor"):
        section = top.get(name)
        if isinstance(section, Mapping):
            top[name] = reader.rename(
                section, list(AlgorithmConfig.model_fields), (name,), reader.user_path((name,))
            )


def _read_training_service(top: dict[str, Any], reader: _Reader) -> None:
    loc: Loc = ("training_service",)
    section = top.get("training_service")
    if section is None:
        return
    if isinstance(section, list):  # NNI's hybrid mode: a list of training services
        if len(section) != 1:
            reader.fail(
                top, loc, "give one training service (several at once, NNI's hybrid mode, is not supported)"
            )
            return
        section = section[0]
        reader.spelling[loc] = join_path(reader.spelling[loc], 0)
    path = reader.user_path(loc)
    if not isinstance(section, Mapping):
        reader.fail(top, loc, "must be a mapping with a platform")
        return
    platform_key = next((key for key in section if isinstance(key, str) and _fold(key) == "platform"), None)
    if platform_key is None:
        reader.fail(top, loc, "required", at=join_path(path, "platform"))
        return
    platform = section[platform_key]
    model = PLATFORMS.get(platform) if isinstance(platform, str) else None
    if model is None:
        reason = f"{platform!r} is not supported (supported: {', '.join(SUPPORTED_PLATFORMS)})"
        reader.fail(top, loc, reason, at=join_path(path, platform_key))
        return
    renamed = reader.rename(section, [*model.model_fields, *_SHORTCUTS], loc, path)
    for name in _SHORTCUTS:  # as in NNI, the training service's value wins over the top level's
        if name in renamed:
            top[name] = renamed.pop(name)
            reader.spelling[(name,)] = reader.spelling[(*loc, name)]
    top["training_service"] = renamed


def _read_shared_storage(top: dict[str, Any], reader: _Reader) -> None:
    loc: Loc = ("shared_storage",)
    section = top.get("shared_storage")
    if section is None:
        return
    path = reader.user_path(loc)
    if not isinstance(section, Mapping):
        reader.fail(top, loc, "must be a mapping with a storageType")
        return
    type_key = next((key for key in section if isinstance(key, str) and _fold(key) == "storagetype"), None)
    storage_type = None if type_key is None else section[type_key]
    if type_key is None:
        reader.fail(top, loc, "required", at=join_path(path, "storageType"))
    elif not isinstance(storage_type, str) or storage_type.lower() != "azureblob":
        reason = f"{storage_type!r} is not supported (supported: AzureBlob)"
        reader.fail(top, loc, reason, at=join_path(path, type_key))
    else:
        renamed = reader.rename(section, list(AzureBlobConfig.model_fields), loc, path)
        renamed["storage_type"] = "AzureBlob"
        top["shared_storage"] = renamed


def _read_search_space(top: dict[str, Any], reader: _Reader, base_dir: Path | None) -> None:
    """Put the search space inline, read from ``searchSpaceFile`` if that is how it is given."""
    loc: Loc = ("search_space",)
    inline = top.get("search_space") is not None
    file_value = top.pop("search_space_file", None)
    file_path = reader.user_path(("search_space_file",))
    if inline and file_value is not None:
        reader.fail(top, loc, f"give {reader.user_path(loc)} or {file_path}, not both", at=file_path)
    elif not inline and file_value is None:
        reader.fail(top, loc, "required (give searchSpaceFile, or the search space inline as searchSpace)")
    elif file_value is not None:
        if base_dir is None:
            reader.fail(top, loc, "no file can be read here: give the search space inline", at=file_path)
        elif not isinstance(file_value, str | Path):
            reader.fail(top, loc, f"expected a file path, got {file_value!r}", at=file_path)
        else:
            path = Path(os.path.abspath(base_dir / Path(file_value).expanduser()))
            try:
                top["search_space"] = _load_search_space_file(path)
            except ValueError as exc:
                reader.fail(top, loc, str(exc), at=file_path)
                return
            reader.spelling[loc] = file_path


def _load_search_space_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:  # like NNI: JSON first (PyYAML reads YAML 1.1, not quite a superset of JSON), then YAML
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is neither JSON nor YAML: {exc}") from None


def _placeholder_problems(value: Any, path: str, free_form: bool) -> Iterator[tuple[str, str]]:
    """Find ``${...}`` left from a template (where ``${VAR}`` is legitimate, only unusual ones)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner_free_form = free_form or _fold(str(key)) in _FREE_FORM
            yield from _placeholder_problems(item, join_path(path, str(key)), inner_free_form)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _placeholder_problems(item, join_path(path, index), free_form)
    elif isinstance(value, str):
        for match in _PLACEHOLDER.finditer(value):
            inner = match.group(1)
            if not free_form or inner.startswith("replace_to") or not inner.isidentifier():
                secret = is_secret_name(path.rsplit(".", 1)[-1])
                yield path, "placeholder not filled in" + ("" if secret else f": {match.group(0)}")
                break


# ---------------------------------------------------------------- errors


def _pydantic_problems(error: ValidationError, reader: _Reader) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors():
        loc: Loc = tuple(item["loc"])
        if len(loc) >= 2 and loc[0] == "training_service" and loc[1] in PLATFORMS:
            loc = (loc[0], *loc[2:])  # drop the discriminator's tag
        if any(loc[: len(dropped)] == dropped for dropped in reader.dropped):
            continue
        path = reader.user_path(loc)
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, SearchSpaceError):
            if cause.parameter != "<root>":
                path = f"{path}.{cause.parameter}"
            problems.append((path, cause.reason))
            continue
        problems.append((path, _reason(item, secret=bool(loc) and is_secret_name(str(loc[-1])))))
    return problems


def _reason(item: Any, secret: bool) -> str:
    kind = item["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("value_error", "assertion_error"):
        return str(item["ctx"]["error"])
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping"
    message = str(item["msg"])
    message = message[:1].lower() + message[1:]
    value = item.get("input")
    if not secret and not isinstance(value, Mapping | list):
        shown = repr(value)
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return message


# ---------------------------------------------------------------- public entry points


def parse_experiment_config(data: Mapping[str, Any], base_dir: Path | None = None) -> ExperimentConfig:
    """Validate an NNI v2 experiment config given as a dict (camelCase or snake_case keys).

    With ``base_dir``, relative paths are resolved against it, ``searchSpaceFile`` is read and
    the trial code folder must exist. With ``base_dir=None`` (wire mode) no file is touched:
    the search space must be inline and paths are kept as given (information only).
    Raises :class:`ConfigError` listing every problem found.
    """
    if not isinstance(data, Mapping):
        raise ConfigError([("<root>", f"expected a mapping of keys to values, got {type(data).__name__}")])
    document, reader = _read_document(data, base_dir)
    context = {"base_dir": None if base_dir is None else Path(base_dir)}
    try:
        config = ExperimentConfig.model_validate(document, context=context)
    except ValidationError as exc:
        raise ConfigError(reader.problems + _pydantic_problems(exc, reader)) from None
    cross_field = [(reader.user_path(loc), reason) for loc, reason in _cross_field_problems(config)]
    problems = reader.problems + cross_field
    if problems:
        raise ConfigError(problems)
    return config


def _cross_field_problems(config: ExperimentConfig) -> Iterator[tuple[Loc, str]]:
    service = config.training_service
    if isinstance(service, LocalConfig):  # NNI's LocalConfig._validate_canonical
        if config.trial_gpu_number > 0 and service.use_active_gpu is None:
            yield (
                ("training_service", "use_active_gpu"),
                "required when trialGpuNumber > 0: true if the GPUs also run a desktop (GUI), "
                "false to leave GPUs that other processes use alone",
            )
        if config.trial_gpu_number == 0 and service.max_trial_number_per_gpu != 1:
            yield ("training_service", "max_trial_number_per_gpu"), "has no effect without trialGpuNumber"


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file (YAML or JSON), as ``nnictl create --config`` does.

    Relative paths in it are resolved against the file's folder and ``searchSpaceFile`` is read
    into the config. Raises :class:`ConfigError`, naming the file, listing every problem found.
    """
    path = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot read: {exc.strerror or exc}")], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("<file>", f"not valid YAML: {exc}")], source=source) from None
    try:
        return parse_experiment_config(data, Path(os.path.abspath(path)).parent)
    except ConfigError as exc:
        raise ConfigError(exc.errors, source=source) from None
