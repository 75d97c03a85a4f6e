"""Errors raised when building assessors."""

from __future__ import annotations

from shared.algorithms import ClassArgsError

__all__ = ["AssessorConfigError"]


class AssessorConfigError(ClassArgsError):
    """An assessor name or classArg is wrong; the message names the assessor and the argument."""

    def __init__(self, assessor: str, reason: str, argument: str | None = None) -> None:
        super().__init__("assessor", assessor, reason, argument)
        self.assessor = assessor
