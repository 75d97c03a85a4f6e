"""The config's sections: tuner and assessor, training services, shared storage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_serializer, field_validator, model_validator

from shared import algorithms
from shared.algorithms import Role
from shared.secrets_mask import SECRET_MASK

from .fields import GpuIndices, NonBlankStr, Section, TrialsPerGpu, resolve_path, unbounded_number_problem


class AlgorithmConfig(Section):
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
        return None if value is None else resolve_path(value, info, must_be_dir=True)

    @field_validator("class_args")
    @classmethod
    def _bounded_class_args(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Each algorithm checks its own arguments' meaning (the tuner service does, for the
        # built-ins); here every number, a custom algorithm's too, must at least be machine-sized.
        if value is not None:
            problem = unbounded_number_problem(value, "", 0)
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


class LocalConfig(Section):
    """Trials as processes on a submitter's machine."""

    platform: Literal["local"] = Field(default="local", description="Always 'local'.")
    use_active_gpu: bool | None = Field(
        default=None, description="Use GPUs that other processes use; required when trialGpuNumber > 0."
    )
    max_trial_number_per_gpu: TrialsPerGpu = Field(default=1, description="Trials sharing one GPU.")
    gpu_indices: GpuIndices = Field(default=None, description="GPUs trials may use; none = all.")
    reuse_mode: bool = Field(default=False, description="Accepted for NNI compatibility; no effect.")


class AmlConfig(Section):
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

PLATFORMS: dict[str, type[LocalConfig] | type[AmlConfig]] = {"local": LocalConfig, "aml": AmlConfig}


class AzureBlobConfig(Section):
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
        return resolve_path(value, info)

    @field_serializer("storage_account_key")
    def _mask_key(self, value: SecretStr | None) -> str | None:
        return None if value is None else SECRET_MASK
