"""``nni.tuner.Tuner``: the base class of a custom tuner, with NNI's defaults.

A tuner overrides :meth:`Tuner.update_search_space`, :meth:`Tuner.receive_trial_result` and
:meth:`Tuner.generate_parameters` (or :meth:`Tuner.generate_multiple_parameters`). tunebus calls
``update_search_space`` once after construction, ``generate_parameters`` with a fresh integer
id per trial, ``receive_trial_result`` when a trial reports its final result, ``trial_end``
when a trial is over (success or not), and, when a restarted tuner service rebuilds the
experiment, ``import_data`` with every recorded trial (``{"parameter": ..., "value": ...}``,
value ``None`` for trials without a result).
"""

from __future__ import annotations

import logging
from typing import Any

from . import NoMoreTrialError
from .recoverable import Recoverable
from .typehint import Parameters, SearchSpace, TrialMetric, TrialRecord

__all__ = ["Tuner"]

_logger = logging.getLogger(__name__)


class Tuner(Recoverable):
    """The abstract tuner; see the module docstring for when each method is called."""

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> Parameters:
        """Parameters for a new trial (anything JSON-serialisable); raise
        :class:`nni.NoMoreTrialError` when the search space is exhausted."""
        raise NotImplementedError("Tuner: generate_parameters not implemented")

    def generate_multiple_parameters(self, parameter_id_list: list[int], **kwargs: Any) -> list[Parameters]:
        """One :meth:`generate_parameters` per id, in order; stops (returning what it has) at the
        first :class:`nni.NoMoreTrialError`."""
        result = []
        for parameter_id in parameter_id_list:
            try:
                result.append(self.generate_parameters(parameter_id, **kwargs))
            except NoMoreTrialError:
                return result
        return result

    def receive_trial_result(self, parameter_id: int, parameters: Parameters, value: TrialMetric,
                             **kwargs: Any) -> None:
        """A trial's final result (what it gave ``nni.report_final_result``)."""
        raise NotImplementedError("Tuner: receive_trial_result not implemented")

    def _accept_customized_trials(self, accept: bool = True) -> None:
        self._accept_customized = accept

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A trial is over: ``success`` is whether it succeeded. Nothing by default."""

    def update_search_space(self, search_space: SearchSpace) -> None:
        """The experiment's search space."""
        raise NotImplementedError("Tuner: update_search_space not implemented")

    def load_checkpoint(self) -> None:
        """Nothing by default (logged, as NNI does)."""
        _logger.info("Load checkpoint ignored by tuner, checkpoint path: %s", self.get_checkpoint_path())

    def save_checkpoint(self) -> None:
        """Nothing by default (logged, as NNI does)."""
        _logger.info("Save checkpoint ignored by tuner, checkpoint path: %s", self.get_checkpoint_path())

    def import_data(self, data: list[TrialRecord]) -> None:
        """Earlier trials to learn from; ignored by default."""

    def _on_exit(self) -> None:
        pass

    def _on_error(self) -> None:
        pass
