"""NNI v2 experiment configs: reading, validating and normalizing them.

tunebus accepts the file ``nnictl create --config`` accepts (NNI's v2 schema) for the ``local``
and ``aml`` platforms; keys match with case and underscores ignored, as in NNI, and any other key
is an error naming it. Every problem is reported at once in a :class:`~shared.errors.ConfigError`
as ``(field_path, reason)`` pairs, in the user's own spelling.

In: :func:`load_experiment_config` (a YAML or JSON file; paths against its folder) and
:func:`parse_experiment_config` (a dict; with ``base_dir=None``, *wire mode*, no file is touched:
how services read an ``experiment.start``). Out: :meth:`ExperimentConfig.normalized` (for people,
secrets masked), :meth:`ExperimentConfig.to_wire` (messages and ``experiment.json``, no secret)
and :meth:`ExperimentConfig.secrets` (what ``secrets.json`` holds). What differs from NNI:
:class:`ExperimentConfig`'s docstring.
"""

from .experiment import ExperimentConfig, ExperimentSecrets
from .fields import SUPPORTED_PLATFORMS, parse_duration
from .reader import load_experiment_config, parse_experiment_config
from .sections import AlgorithmConfig, AmlConfig, AssessorConfig, AzureBlobConfig, LocalConfig, TunerConfig

__all__ = [
    "SUPPORTED_PLATFORMS",
    "AlgorithmConfig",
    "AmlConfig",
    "AssessorConfig",
    "AzureBlobConfig",
    "ExperimentConfig",
    "ExperimentSecrets",
    "LocalConfig",
    "TunerConfig",
    "load_experiment_config",
    "parse_duration",
    "parse_experiment_config",
]
