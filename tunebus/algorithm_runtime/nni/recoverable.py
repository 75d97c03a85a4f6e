"""``nni.recoverable.Recoverable``: the checkpoint hooks every tuner and assessor inherits.

Under tunebus a restarted tuner service rebuilds an algorithm from the experiment's recorded
trials (``Tuner.import_data``), not from a checkpoint; ``NNI_CHECKPOINT_DIRECTORY`` is not
set, so :meth:`Recoverable.get_checkpoint_path` answers ``None`` as NNI does without one.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["Recoverable"]


class Recoverable:
    """Checkpoint hooks (they do nothing by default) and the bookkeeping of resumed trials."""

    def __init__(self) -> None:
        self.recovered_max_param_id = -1
        self.recovered_trial_params: dict[int, Any] = {}

    def load_checkpoint(self) -> None:
        """Restore state from :meth:`get_checkpoint_path`; nothing by default."""

    def save_checkpoint(self) -> None:
        """Save state under :meth:`get_checkpoint_path`; nothing by default."""

    def get_checkpoint_path(self) -> str | None:
        """``NNI_CHECKPOINT_DIRECTORY`` when it names an existing folder, else None."""
        path = os.getenv("NNI_CHECKPOINT_DIRECTORY")
        if path is not None and os.path.isdir(path):
            return path
        return None

    def recover_parameter_id(self, data: Any) -> int:
        """Remember resumed trials' parameters (``{'parameter_id', 'parameters'}`` records, or
        their JSON); returns the largest integer parameter id seen (0 if none)."""
        import json

        records = data if isinstance(data, list) else [data]
        largest = 0
        for record in records:
            if isinstance(record, str):
                record = json.loads(record)
            parameter_id = record["parameter_id"]
            if not isinstance(parameter_id, int):  # a user's customized trial: skipped, as NNI does
                continue
            self.recovered_trial_params[parameter_id] = record["parameters"]
            largest = max(largest, parameter_id)
        self.recovered_max_param_id = largest
        return largest

    def is_created_in_previous_exp(self, param_id: int | None) -> bool:
        """Whether ``param_id`` belongs to a trial recovered by :meth:`recover_parameter_id`."""
        return param_id is not None and param_id <= self.recovered_max_param_id

    def get_previous_param(self, param_id: int) -> Any:
        """A recovered trial's parameters."""
        return self.recovered_trial_params[param_id]
