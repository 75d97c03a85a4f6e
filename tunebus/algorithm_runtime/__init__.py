"""The algorithm runtime: a folder put on the path of a custom-algorithm worker process only.

It holds ``nni/``, tunebus's rendering of NNI's algorithm-side API (``nni.tuner.Tuner``,
``nni.assessor.Assessor`` and ``AssessResult``, ``nni.utils``, ``nni.typehint``,
``nni.recoverable``, ``nni.common.hpo_utils``) so that a tuner or assessor written
for NNI imports and runs unchanged. It is never on a trial's path (trials get
:mod:`tunebus.trial_runtime`) nor on the tuner service's own: the worker
(:mod:`services.tuner.worker`) appends :data:`RUNTIME_DIR` to its ``sys.path``, after
site-packages, so a real NNI installed next to the service wins over it.
"""

from __future__ import annotations

import os

__all__ = ["RUNTIME_DIR"]

#: The folder to append to a custom-algorithm worker's ``sys.path`` (it contains ``nni``).
RUNTIME_DIR: str = os.path.dirname(os.path.abspath(__file__))
