"""``nni.common.hpo_utils``: ``OptimizeMode`` (NNI's search-space formatting helpers are not here)."""

from __future__ import annotations

from enum import Enum

__all__ = ["OptimizeMode"]


class OptimizeMode(Enum):
    """Whether the tuner minimises or maximises the reported metric."""

    Minimize = "minimize"
    Maximize = "maximize"
