"""The trial runtime: a folder put first on a trial's ``PYTHONPATH``.

It holds ``nni/``, a stdlib-only stand-in for NNI's trial API, so that unchanged NNI trial
code (``import nni``) runs under tunebus without NNI installed. The submitter puts
:data:`RUNTIME_DIR` on the trial's path (and copies it into AML job snapshots); nothing in
that folder may import tunebus, pydantic or any other third-party package.
"""

from __future__ import annotations

import os

__all__ = ["RUNTIME_DIR"]

#: The folder to put on a trial's PYTHONPATH (it contains the ``nni`` package).
RUNTIME_DIR: str = os.path.dirname(os.path.abspath(__file__))
