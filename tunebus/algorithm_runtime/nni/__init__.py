"""NNI's algorithm-side API for custom tuners and assessors, as tunebus runs them.

Only what an algorithm uses is here: ``nni.tuner``, ``nni.assessor``, ``nni.utils``,
``nni.typehint``, ``nni.recoverable``, ``nni.common.hpo_utils`` and
:class:`NoMoreTrialError`. The trial API (``nni.get_next_parameter`` ...) is the trial shim's
(:mod:`tunebus.trial_runtime`), not an algorithm's business, and is absent here.
"""

from __future__ import annotations

__all__ = ["NoMoreTrialError", "__version__"]

#: The NNI release whose algorithm API this follows.
__version__ = "3.0"


class NoMoreTrialError(Exception):
    """Raised by ``Tuner.generate_parameters`` when the search space is exhausted.

    As in NNI, ``str()`` of it is the message (default ``'Search space fully explored'``).
    """

    def __init__(self, ErrorInfo: str = "Search space fully explored") -> None:
        super().__init__(ErrorInfo)
        self.errorinfo = ErrorInfo

    def __str__(self) -> str:
        return self.errorinfo
