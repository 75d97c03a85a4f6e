"""``nni.assessor``: the base class of a custom assessor and its answer, :class:`AssessResult`."""

from __future__ import annotations

import logging
from enum import Enum

from .recoverable import Recoverable
from .typehint import TrialMetric

__all__ = ["AssessResult", "Assessor"]

_logger = logging.getLogger(__name__)


class AssessResult(Enum):
    """What :meth:`Assessor.assess_trial` answers."""

    Good = True
    """The trial works well: let it run."""
    Bad = False
    """The trial works poorly: stop it early."""


class Assessor(Recoverable):
    """The abstract assessor: override :meth:`assess_trial` (and :meth:`trial_end` to hear of ends).

    ``assess_trial`` gets a running trial's intermediate results so far, in order, each time a
    new one arrives (never empty, always longer than before); once it answers Bad the trial is
    stopped and not assessed again.
    """

    def assess_trial(self, trial_job_id: str, trial_history: list[TrialMetric]) -> AssessResult:
        """:attr:`AssessResult.Good` to keep the trial running, :attr:`AssessResult.Bad` to stop it."""
        raise NotImplementedError("Assessor: assess_trial not implemented")

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        """A trial with intermediate results is over; ``success`` is whether it succeeded."""

    def load_checkpoint(self) -> None:
        """Nothing by default (logged, as NNI does)."""
        _logger.info("Load checkpoint ignored by assessor, checkpoint path: %s", self.get_checkpoint_path())

    def save_checkpoint(self) -> None:
        """Nothing by default (logged, as NNI does)."""
        _logger.info("Save checkpoint ignored by assessor, checkpoint path: %s", self.get_checkpoint_path())

    def _on_exit(self) -> None:
        pass

    def _on_error(self) -> None:
        pass
