"""The two ways a handler fails: the bus dead-letters the one and retries the other."""

from __future__ import annotations

__all__ = ["PermanentError", "TransientError"]


class PermanentError(Exception):
    """The message can never be handled (bad content): dead-letter it with this reason."""


class TransientError(Exception):
    """The handler could not finish now (a dependency is down): retry later."""
