"""``nni.common.hpo_utils``: ``OptimizeMode`` and NNI's search-space formatting helpers
(:mod:`.formatting`). NNI's ``Deduplicator`` and ``validate_search_space`` are not here."""

from __future__ import annotations

from enum import Enum

from .formatting import ParameterSpec, deformat_parameters, format_parameters, format_search_space

__all__ = ["OptimizeMode", "ParameterSpec", "deformat_parameters", "format_parameters", "format_search_space"]


class OptimizeMode(Enum):
    """Whether the tuner minimises or maximises the reported metric."""

    Minimize = "minimize"
    Maximize = "maximize"
