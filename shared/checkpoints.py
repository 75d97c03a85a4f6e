"""PBT's checkpoints when tunebus keeps them: how a trial's parameters name them, and whether it does.

NNI's PBT tuner gives each trial two folders in its parameters, ``load_checkpoint_dir`` and
``save_checkpoint_dir``, under ``classArgs.all_checkpoint_dir`` (a folder every trial reaches,
``<root>/<member>/<step>``). Without ``all_checkpoint_dir``, tunebus keeps the checkpoints in the
experiment's storage instead (:meth:`shared.layout.Layout.checkpoint_prefix`): the tuner then writes
a reference (``tunebus-checkpoints/<member>/<step>``) in those two parameters, and the submitter
gives the trial local folders in their place, filled from storage before it starts and saved
back once it has succeeded. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AML_CHECKPOINTS_REFUSED",
    "CHECKPOINT_KEYS",
    "LOAD_KEY",
    "MANAGED_ROOT",
    "PBT_NAMES",
    "SAVE_KEY",
    "CheckpointRef",
    "checkpoint_ref",
    "managed_checkpoints",
    "parse_checkpoint_ref",
]

LOAD_KEY = "load_checkpoint_dir"
SAVE_KEY = "save_checkpoint_dir"
CHECKPOINT_KEYS = (LOAD_KEY, SAVE_KEY)
#: The root the tuner writes in references to checkpoints tunebus keeps.
MANAGED_ROOT = "tunebus-checkpoints"
#: The tuner names (canonical and NNI's alias) that hand checkpoints from trial to trial.
PBT_NAMES = ("PBT", "PBTTuner")
# Bounded like every number that crosses a service boundary.
_REF = re.compile(rf"^{MANAGED_ROOT}/(0|[1-9][0-9]{{0,5}})/(0|[1-9][0-9]{{0,8}})$")

CheckpointRef = tuple[int, int]  # (population member, step)

#: Why a PBT experiment on Azure ML needs its own checkpoint folder (tunebus create says it).
AML_CHECKPOINTS_REFUSED = (
    "PBT on platform aml needs classArgs.all_checkpoint_dir: a folder every Azure ML job of the "
    "experiment mounts (as NNI requires shared storage for PBT on remote platforms); tunebus keeps "
    "PBT's checkpoints in the experiment's storage for local trials only")


def managed_checkpoints(config: Mapping[str, Any]) -> bool:
    """Whether tunebus keeps this experiment's (wire-form config's) checkpoints: PBT without
    ``classArgs.all_checkpoint_dir``."""
    tuner = config.get("tuner") or {}
    if not isinstance(tuner, Mapping) or tuner.get("name") not in PBT_NAMES:
        return False
    class_args = tuner.get("classArgs") or {}
    return not (isinstance(class_args, Mapping) and class_args.get("all_checkpoint_dir") is not None)


def checkpoint_ref(member: int, step: int) -> str:
    """The parameter value naming member ``member``'s checkpoint after step ``step``."""
    return f"{MANAGED_ROOT}/{member}/{step}"


def parse_checkpoint_ref(value: Any) -> CheckpointRef | None:
    """``(member, step)`` of a reference written by :func:`checkpoint_ref`; None for anything else."""
    if not isinstance(value, str):
        return None
    match = _REF.match(value)
    return None if match is None else (int(match[1]), int(match[2]))
