"""Custom tuners, as NNI names them: ``className`` ("module.Class") in the experiment's stored code.

The user's tuner object lives in the experiment's worker process (:mod:`services.tuner.worker`);
:class:`RemoteTuner` is its stand-in in the tuner service, with NNI's tuner interface. Each
method is one request to the worker, within the deadline of the call it is part of
(:class:`services.tuner.calls.ProcessCalls`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..custom_process import AlgorithmProcess, RemoteNoMoreTrials
from .errors import NoMoreTrials

__all__ = ["RemoteTuner"]


class RemoteTuner:
    """The user's tuner in the worker: NNI's methods forwarded; NNI's defaults are the worker's."""

    def __init__(self, process: AlgorithmProcess, class_name: str) -> None:
        self.process = process
        self.class_name = class_name

    def _call(self, method: str, *args: Any) -> Any:
        return self.process.request({"op": "call", "role": "tuner", "method": method, "args": list(args)})

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self._call("update_search_space", search_space)

    def generate_parameters(self, parameter_id: Any, **kwargs: Any) -> Any:
        """The user's suggestion; NNI's ``NoMoreTrialError`` becomes :class:`NoMoreTrials`."""
        try:
            return self._call("generate_parameters", parameter_id)
        except RemoteNoMoreTrials as exc:
            raise NoMoreTrials(str(exc)) from None

    def generate_multiple_parameters(self, parameter_id_list: Sequence[Any], **kwargs: Any) -> list[Any]:
        return list(self._call("generate_multiple_parameters", list(parameter_id_list)) or [])

    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None:
        self._call("receive_trial_result", parameter_id, parameters, value)

    def trial_end(self, parameter_id: Any, success: bool, **kwargs: Any) -> None:
        self._call("trial_end", parameter_id, success)

    def import_data(self, data: Iterable[Mapping[str, Any]]) -> None:
        """The recorded trials with a result (NNI's ``TrialRecord`` always has a value, and users'
        ``import_data`` read it with ``extract_scalar_reward``); nothing is sent when none has."""
        records = [dict(record) for record in data if record.get("value") is not None]
        if records:
            self._call("import_data", records)
