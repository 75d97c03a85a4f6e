"""Checks ``tunebus create`` runs before anything is uploaded: a built-in algorithm's classArgs and
the search-space types it supports, with the same errors the tuner service would end the
experiment with (so a typo is a usage error at once, not an ERROR minutes later)."""

from __future__ import annotations

from typing import Any

from shared.algorithms import ADVISORS
from shared.checkpoints import AML_CHECKPOINTS_REFUSED, PBT_NAMES
from shared.search_space import SearchSpaceError

from .algorithms import TunerConfigError, create_tuner
from .assessors import AssessorConfigError, create_assessor

__all__ = ["builtin_algorithm_problems"]


def builtin_algorithm_problems(
    tuner: Any, assessor: Any | None, search_space: dict[str, Any], platform: str | None = None
) -> list[tuple[str, str]]:
    """``(field, reason)`` for each built-in tuner or assessor its config would make fail.

    ``tuner`` and ``assessor`` are :class:`shared.config.AlgorithmConfig` sections; custom
    (``className``) algorithms are the tuner service's to load, so they are not built here.
    ``platform`` (the training service's) refuses what a built-in cannot do there (PBT's checkpoints).
    """
    problems: list[tuple[str, str]] = []
    if tuner.class_name is None:
        try:
            create_tuner(tuner.name, tuner.class_args, search_space)
        except (TunerConfigError, SearchSpaceError) as exc:
            problems.append(("tuner", str(exc)))
    class_args = tuner.class_args or {}
    if platform == "aml" and tuner.name in PBT_NAMES and class_args.get("all_checkpoint_dir") is None:
        problems.append(("tuner.classArgs.all_checkpoint_dir", AML_CHECKPOINTS_REFUSED))
    if assessor is not None and tuner.name in ADVISORS:
        problems.append(("assessor", f"{tuner.name} is an advisor: it stops and promotes trials itself, "
                                     f"so it takes no assessor (as in NNI)"))
    elif assessor is not None and assessor.class_name is None:
        try:
            create_assessor(assessor.name, assessor.class_args)
        except AssessorConfigError as exc:
            problems.append(("assessor", str(exc)))
    return problems
