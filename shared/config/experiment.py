"""The whole experiment config and its secrets, kept apart from it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from shared.search_space import validate_search_space
from shared.secrets_mask import SECRET_MASK

from .fields import (
    Duration,
    GpuIndices,
    LogLevel,
    NonBlankStr,
    Section,
    TrialConcurrency,
    TrialGpuNumber,
    TrialNumber,
    resolve_path,
)
from .sections import AssessorConfig, AzureBlobConfig, TrainingServiceConfig, TunerConfig


class ExperimentConfig(Section):
    """A whole experiment, in NNI's v2 schema.

    Where tunebus differs from NNI: ``useAnnotation: true``, platforms other than local/aml, NFS
    shared storage, several training services (hybrid mode) and tuners not in
    :data:`shared.algorithms.TUNERS` are rejected; ``trialGpuNumber`` defaults to 0; aml accepts
    ``useActiveGpu`` (as the seed document uses it); durations are float seconds (NNI rounds up to
    whole seconds); ``${...}`` placeholders left in the file are errors.
    """

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
        return resolve_path(value, info, must_be_dir=True)

    @field_validator("experiment_working_directory")
    @classmethod
    def _working_directory(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

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
