"""NNI v2 experiment configs: reading, validating and normalizing them.

tunebus accepts the experiment file that ``nnictl create --config`` accepts (NNI's v2 schema,
``nni/experiment/config/``), for the two platforms it runs: ``local`` and ``aml``. As in NNI,
keys match with case and underscores ignored, so ``trialConcurrency``, ``trial_concurrency``
and ``TrialConcurrency`` are the same key; any other key is an error that names it.

Two ways in:

* :func:`load_experiment_config` reads a YAML (or JSON) file; relative paths are resolved
  against the file's folder, ``searchSpaceFile`` is read and the trial code folder must exist.
* :func:`parse_experiment_config` validates a dict. With ``base_dir`` it behaves like the file
  loader; without (``None``, *wire mode*) it touches no file: this is how services read the
  config carried by an ``experiment.start`` message, which has the search space inline.

Two ways out:

* :meth:`ExperimentConfig.normalized`: the canonical camelCase form for people and logs;
  durations in seconds, absolute paths, search space inline, secrets masked as ``"***"``.
* :meth:`ExperimentConfig.to_wire`: the same form *without secrets* (the keys are left out),
  for messages and ``experiment.json``. It round-trips through ``parse_experiment_config``.
* :meth:`ExperimentConfig.secrets`: the secrets alone (:class:`ExperimentSecrets`), which the
  CLI stores in ``experiments/<id>/secrets.json`` (readable only with the deployment's storage
  credentials) and services read back from there. No secret travels in a message.

Every problem is reported at once in a :class:`~shared.errors.ConfigError` as
``(field_path, reason)`` pairs, with the field path in the user's own spelling.

Where tunebus differs from NNI: ``useAnnotation: true``, platforms other than local/aml, NFS
shared storage, several training services (hybrid mode) and tuners other than those in
:data:`shared.algorithms.TUNERS` are rejected; ``trialGpuNumber`` defaults to 0; aml accepts
``useActiveGpu`` (as the seed document uses it); durations are kept as float seconds
(NNI rounds up to whole seconds); ``${...}`` placeholders left in the file are errors.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared import algorithms, limits
from shared.algorithms import Role
from shared.errors import ConfigError
from shared.search_space import SearchSpaceError, validate_search_space
from shared.secrets_mask import SECRET_MASK, is_secret_name, redact_secrets

__all__ = [
    "SECRET_MASK",
    "SUPPORTED_PLATFORMS",
    "AlgorithmConfig",
    "AmlConfig",
    "AssessorConfig",
    "AzureBlobConfig",
    "ConfigError",
    "ExperimentConfig",
    "ExperimentSecrets",
    "LocalConfig",
    "TunerConfig",
    "load_experiment_config",
    "parse_duration",
    "parse_experiment_config",
    "redact_secrets",
]

#: Training-service platforms tunebus runs.
SUPPORTED_PLATFORMS: tuple[str, ...] = ("local", "aml")

_TIME_UNITS = {"d": 24 * 3600.0, "h": 3600.0, "m": 60.0, "s": 1.0}


# ---------------------------------------------------------------- field types


def parse_duration(value: Any) -> float:
    """Parse an NNI duration: seconds, or a number and a unit (``30s``, ``10m``, ``1h``, ``0.5d``).

    Returns float seconds; raises ``ValueError`` unless the duration is positive and at most
    :data:`shared.limits.MAX_DURATION_SECONDS` (365 days).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number of seconds or a string like 30m, got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        factor = _TIME_UNITS.get(text[-1:])
        try:
            if factor is None:
                raise ValueError
            seconds = float(text[:-1]) * factor
        except ValueError:
            raise ValueError(
                f"bad duration {value!r}: use seconds, or a number followed by s, m, h or d (e.g. 30m, 0.5d)"
            ) from None
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range: far past the cap too
            seconds = math.inf
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {_short(value)}")
    if seconds > limits.MAX_DURATION_SECONDS:
        raise ValueError(
            f"a duration must be at most {limits.describe_seconds(limits.MAX_DURATION_SECONDS)}, "
            f"got {_short(value)}"
        )
    return seconds


def _short(value: Any) -> str:
    """``repr(value)``, cut to a readable length (a 400-digit number is no help in a message)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _gpu_index_list(value: Any) -> Any:
    # NNI's canonical_gpu_indices: "0,1" and 1 are shorthands for [0, 1] and [1].
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"expected GPU indices like [0, 1] or '0,1', got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def _check_gpu_indices(value: list[int] | None) -> list[int] | None:
    if value is not None:
        if any(index < 0 for index in value):
            raise ValueError(f"negative GPU index in {value}")
        if any(index > limits.MAX_GPU_INDEX for index in value):
            raise ValueError(f"a GPU index must be at most {limits.MAX_GPU_INDEX}, got {_short(max(value))}")
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate GPU index in {value}")
    return value


def _resolve_path(value: Path, info: ValidationInfo, *, must_be_dir: bool = False) -> Path:
    """Resolve against the config's folder; in wire mode (no base dir) keep the path as given."""
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None:
        return value
    path = Path(os.path.abspath(Path(base_dir) / value.expanduser()))
    if must_be_dir and not path.is_dir():
        raise ValueError(f"not a directory: {path}")
    return path


StrictInt = Annotated[int, Strict()]
TrialConcurrency = Annotated[int, Strict(), Field(ge=1, le=limits.MAX_TRIAL_CONCURRENCY)]
TrialNumber = Annotated[int, Strict(), Field(ge=1, le=limits.MAX_TRIAL_NUMBER)]
TrialGpuNumber = Annotated[int, Strict(), Field(ge=0, le=limits.MAX_TRIAL_GPU_NUMBER)]
TrialsPerGpu = Annotated[int, Strict(), Field(ge=1, le=limits.MAX_TRIAL_NUMBER_PER_GPU)]
NonBlankStr = Annotated[str, AfterValidator(_not_blank)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
GpuIndices = Annotated[
    list[StrictInt] | None, BeforeValidator(_gpu_index_list), AfterValidator(_check_gpu_indices)
]
LogLevel = Literal["fatal", "error", "warning", "info", "debug", "trace"]


class _Section(BaseModel):
    """Base of every config section: unknown keys forbidden, immutable, camelCase when dumped."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=AliasGenerator(serialization_alias=to_camel),
    )


# ---------------------------------------------------------------- sections


class AlgorithmConfig(_Section):
    """A tuner or assessor: a built-in ``name``, or a custom ``className`` in ``codeDirectory``."""

    kind: ClassVar[Role] = "tuner"

    name: str | None = Field(default=None, description="Built-in algorithm, e.g. 'TPE'.")
    class_name: str | None = Field(default=None, description="Custom algorithm class, 'module.Class'.")
    code_directory: Path | None = Field(default=None, description="Folder holding the custom class's module.")
    class_args: dict[str, Any] | None = Field(default=None, description="Keyword arguments of the algorithm.")

    @field_validator("name")
    @classmethod
    def _builtin_name(cls, value: str | None) -> str | None:
        # NNI matches built-in names case-insensitively; keep its registered spelling.
        return None if value is None else algorithms.find(cls.kind, value).name

    @field_validator("code_directory")
    @classmethod
    def _code_directory(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info, must_be_dir=True)

    @field_validator("class_args")
    @classmethod
    def _bounded_class_args(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Each algorithm checks its own arguments' meaning (the tuner service does, for the
        # built-ins); here every number, a custom algorithm's too, must at least be machine-sized.
        if value is not None:
            problem = _unbounded_number(value, "", 0)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _builtin_or_custom(self, info: ValidationInfo) -> AlgorithmConfig:
        if self.class_name is None:
            if not self.name:
                raise ValueError("set name (a built-in algorithm) or className and codeDirectory")
            if self.code_directory is not None:
                raise ValueError("codeDirectory goes with a custom className, not with a built-in name")
            return self
        if self.name is not None:
            raise ValueError("set name or className, not both")
        context = info.context or {}
        wire = "base_dir" in context and context["base_dir"] is None
        if wire and self.code_directory is not None:
            # A path on the publisher's machine means nothing to the tuner service (and must not
            # make it import from its own disk): the code travels as a stored archive.
            raise ValueError(
                f"codeDirectory {str(self.code_directory)!r}: a start message cannot name a folder; the "
                f"custom {self.kind}'s code must be in storage (experiments/<id>/algorithms/"
                f"{self.kind}.tar.gz, named by the message's algorithm_code), as tunebus create uploads it")
        if not wire and self.code_directory is None:
            raise ValueError("codeDirectory is required with className")
        return self


class TunerConfig(AlgorithmConfig):
    """The experiment's tuner (NNI's deprecated ``advisor`` is read as the tuner)."""

    kind: ClassVar[Role] = "tuner"


class AssessorConfig(AlgorithmConfig):
    """The experiment's assessor, which may stop poor trials early."""

    kind: ClassVar[Role] = "assessor"


class LocalConfig(_Section):
    """Trials as processes on a submitter's machine."""

    platform: Literal["local"] = Field(default="local", description="Always 'local'.")
    use_active_gpu: bool | None = Field(
        default=None, description="Use GPUs that other processes use; required when trialGpuNumber > 0."
    )
    max_trial_number_per_gpu: TrialsPerGpu = Field(default=1, description="Trials sharing one GPU.")
    gpu_indices: GpuIndices = Field(default=None, description="GPUs trials may use; none = all.")
    reuse_mode: bool = Field(default=False, description="Accepted for NNI compatibility; no effect.")


class AmlConfig(_Section):
    """Trials as Azure Machine Learning runs."""

    platform: Literal["aml"] = Field(default="aml", description="Always 'aml'.")
    subscription_id: NonBlankStr = Field(description="Azure subscription of the workspace.")
    resource_group: NonBlankStr = Field(description="Resource group of the workspace.")
    workspace_name: NonBlankStr = Field(description="Azure ML workspace.")
    compute_target: NonBlankStr = Field(description="Compute cluster the trials run on.")
    docker_image: NonBlankStr = Field(default="msranni/nni", description="Image of the trials' environment.")
    max_trial_number_per_gpu: TrialsPerGpu = Field(default=1, description="Trials sharing one GPU.")
    use_active_gpu: bool = Field(default=False, description="Accepted as in the seed document; no effect.")


TrainingServiceConfig = Annotated[LocalConfig | AmlConfig, Field(discriminator="platform")]

_PLATFORMS: dict[str, type[LocalConfig] | type[AmlConfig]] = {"local": LocalConfig, "aml": AmlConfig}


class AzureBlobConfig(_Section):
    """NNI's ``sharedStorage`` with ``storageType: AzureBlob``."""

    storage_type: Literal["AzureBlob"] = Field(default="AzureBlob", description="Always 'AzureBlob'.")
    storage_account_name: NonBlankStr = Field(description="Storage account.")
    container_name: NonBlankStr = Field(description="Blob container.")
    storage_account_key: SecretStr | None = Field(
        default=None,
        description="Account key: signs the trials' SAS. Masked in normalized(), left out of to_wire().",
    )
    local_mount_point: Path = Field(description="Where the container is mounted on this machine.")
    remote_mount_point: NonBlankStr = Field(description="Where trials see the container.")
    local_mounted: Literal["usermount", "nnimount", "nomount"] = Field(
        description="Who mounts it locally: the user, NNI, or nobody."
    )

    @field_validator("local_mount_point")
    @classmethod
    def _local_mount_point(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)

    @field_serializer("storage_account_key")
    def _mask_key(self, value: SecretStr | None) -> str | None:
        return None if value is None else SECRET_MASK


class ExperimentConfig(_Section):
    """A whole experiment, in NNI's v2 schema (see the module docstring for what differs)."""

    experiment_name: str | None = Field(default=None, description="Display name.")
    experiment_type: Literal["hpo"] = Field(default="hpo", description="Always 'hpo'.")
    search_space: dict[str, Any] = Field(description="The search space, inline (read from searchSpaceFile).")
    trial_command: NonBlankStr = Field(description="Shell command that runs one trial.")
    trial_code_directory: Path = Field(
        default=Path("."), validate_default=True, description="Folder uploaded as the trial code."
    )
    trial_concurrency: TrialConcurrency = Field(description="Trials running at once.")
    trial_gpu_number: TrialGpuNumber = Field(default=0, description="GPUs per trial.")
    max_experiment_duration: Duration | None = Field(default=None, description="Seconds; none = no limit.")
    max_trial_number: TrialNumber | None = Field(default=None, description="Trials in all; none = no limit.")
    max_trial_duration: Duration | None = Field(
        default=None, description="Seconds per trial; none = no limit."
    )
    nni_manager_ip: str | None = Field(default=None, description="Accepted for NNI compatibility; unused.")
    use_annotation: bool = Field(default=False, description="NNI annotations; not supported, must be false.")
    debug: bool = Field(default=False, description="Debug mode; makes logLevel default to 'debug'.")
    log_level: LogLevel | None = Field(
        default=None, validate_default=True, description="Log level; 'info' unless debug."
    )
    experiment_working_directory: Path = Field(
        default=Path("~/nni-experiments"),
        validate_default=True,
        description="NNI's working folder; kept for compatibility.",
    )
    tuner_gpu_indices: GpuIndices = Field(default=None, description="GPUs the tuner may use.")
    tuner: TunerConfig = Field(description="The tuner.")
    assessor: AssessorConfig | None = Field(default=None, description="The assessor, if any.")
    training_service: TrainingServiceConfig = Field(description="Where trials run.")
    shared_storage: AzureBlobConfig | None = Field(default=None, description="Storage mounted by trials.")

    @field_validator("search_space")
    @classmethod
    def _valid_search_space(cls, value: dict[str, Any]) -> dict[str, Any]:
        validate_search_space(value)  # SearchSpaceError names the parameter; see _pydantic_problems
        return value

    @field_validator("trial_code_directory")
    @classmethod
    def _code_directory(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info, must_be_dir=True)

    @field_validator("experiment_working_directory")
    @classmethod
    def _working_directory(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)

    @field_validator("use_annotation")
    @classmethod
    def _no_annotation(cls, value: bool) -> bool:
        if value:
            raise ValueError("NNI annotations are not supported; give searchSpace or searchSpaceFile instead")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return "debug" if info.data.get("debug") else "info"
        return value.lower() if isinstance(value, str) else value

    @property
    def platform(self) -> str:
        """The training service's platform: 'local' or 'aml'."""
        return self.training_service.platform

    def normalized(self) -> dict[str, Any]:
        """The canonical camelCase form: JSON-able, durations in seconds, search space inline.

        Paths are absolute when the config was read with a base folder; secrets show as ``"***"``.
        Unset optional fields are left out.
        """
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_wire(self) -> dict[str, Any]:
        """The form services exchange (messages, ``experiment.json``): no secret in it.

        :meth:`normalized`, with every secret left out rather than masked (a mask would read
        as a key); :meth:`secrets` has them. It needs no file to be read again:
        ``parse_experiment_config(config.to_wire())`` gives back the config without its secrets.
        ``trialCodeDirectory`` is only information there (the code travels as an archive); a
        custom algorithm's ``codeDirectory`` is left out (its code travels as an archive too,
        :meth:`shared.layout.Layout.algorithm_code_archive`, and a host path in a start message
        is refused).
        """
        return self.model_dump(
            mode="json", by_alias=True, exclude_none=True,
            exclude={"shared_storage": {"storage_account_key"}, "tuner": {"code_directory"},
                     "assessor": {"code_directory"}},
        )

    def secrets(self) -> ExperimentSecrets:
        """The config's secrets, apart from it: what ``experiments/<id>/secrets.json`` holds."""
        key = None if self.shared_storage is None else self.shared_storage.storage_account_key
        if key is not None and key.get_secret_value() == SECRET_MASK:
            key = None  # normalized() output fed back in: the mask is no key
        return ExperimentSecrets(sharedStorageAccountKey=key)


class ExperimentSecrets(BaseModel):
    """An experiment's secrets, kept out of its config, messages and logs.

    Stored as ``experiments/<id>/secrets.json`` in the deployment's container (see
    :meth:`shared.storage.Layout.secrets_doc`): whoever can read it holds the deployment's
    storage credentials already. ``repr`` and ``str`` show ``**********``, never a key.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    shared_storage_account_key: SecretStr | None = Field(
        default=None, alias="sharedStorageAccountKey",
        description="Account key of the AzureBlob sharedStorage; signs the trials' SAS URLs.",
    )

    @property
    def empty(self) -> bool:
        """Whether there is no secret at all (then no secrets document is written)."""
        return self.shared_storage_account_key is None

    def to_document(self) -> dict[str, Any]:
        """The secrets document, keys in clear: write it to storage, never to a log or message."""
        key = self.shared_storage_account_key
        return {} if key is None else {"sharedStorageAccountKey": key.get_secret_value()}

    @classmethod
    def from_document(cls, doc: Any) -> ExperimentSecrets:
        """Read a secrets document (:meth:`to_document`'s form); anything else gives no secret."""
        return cls.model_validate(doc) if isinstance(doc, Mapping) else cls()


# ---------------------------------------------------------------- reading the user's document


Loc = tuple[str | int, ...]

# Training-service fields NNI also accepts at the top level; here the top level holds them.
_SHORTCUTS = ("trial_command", "trial_code_directory", "trial_gpu_number", "nni_manager_ip", "debug")
# Keys that belong under trainingService, for a helpful message when found at the top.
_TRAINING_SERVICE_ONLY = {"platform", "useactivegpu", "maxtrialnumberpergpu", "gpuindices", "reusemode"}
# Values under these keys may use ${VAR} legitimately (shell commands, free-form data).
_FREE_FORM = {"trialcommand", "classargs", "searchspace"}
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def _unbounded_number(value: Any, path: str, depth: int) -> str | None:
    """The first number in ``value`` past the classArgs caps, as a reason naming its path."""
    if depth > limits.MAX_CLASS_ARG_DEPTH:
        return f"{path}: nested deeper than {limits.MAX_CLASS_ARG_DEPTH} levels"
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not limits.MIN_CLASS_ARG_INT <= value <= limits.MAX_CLASS_ARG_INT:
        return f"{path}: integers must fit in 64 bits (-2**63 .. 2**63-1), got {_short(value)}"
    if isinstance(value, float) and not abs(value) <= limits.MAX_CLASS_ARG_NUMBER:
        cap = limits.MAX_CLASS_ARG_NUMBER
        return f"{path}: numbers must be finite and at most {cap:g} in size, got {value!r}"
    items: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        items = [(_join(path, str(key)), item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(_join(path, index), item) for index, item in enumerate(value)]
    for item_path, item in items:
        problem = _unbounded_number(item, item_path, depth + 1)
        if problem is not None:
            return problem
    return None


def _fold(key: str) -> str:
    """NNI's key matching: case and underscores do not matter."""
    return key.lower().replace("_", "")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


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
            path = _join(path, part if isinstance(part, int) else to_camel(part))
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
            key_path = _join(path, str(key))
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
        reader.spelling[loc] = _join(reader.spelling[loc], 0)
    path = reader.user_path(loc)
    if not isinstance(section, Mapping):
        reader.fail(top, loc, "must be a mapping with a platform")
        return
    platform_key = next((key for key in section if isinstance(key, str) and _fold(key) == "platform"), None)
    if platform_key is None:
        reader.fail(top, loc, "required", at=_join(path, "platform"))
        return
    platform = section[platform_key]
    model = _PLATFORMS.get(platform) if isinstance(platform, str) else None
    if model is None:
        reason = f"{platform!r} is not supported (supported: {', '.join(SUPPORTED_PLATFORMS)})"
        reader.fail(top, loc, reason, at=_join(path, platform_key))
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
        reader.fail(top, loc, "required", at=_join(path, "storageType"))
    elif not isinstance(storage_type, str) or storage_type.lower() != "azureblob":
        reason = f"{storage_type!r} is not supported (supported: AzureBlob)"
        reader.fail(top, loc, reason, at=_join(path, type_key))
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
            folded = _fold(str(key))
            yield from _placeholder_problems(item, _join(path, str(key)), free_form or folded in _FREE_FORM)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _placeholder_problems(item, _join(path, index), free_form)
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
        if len(loc) >= 2 and loc[0] == "training_service" and loc[1] in _PLATFORMS:
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
