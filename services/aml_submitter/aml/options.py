"""The AML backend's knobs, from the submitter's settings."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .auth import DEFAULT_AUTH_TIMEOUT
from .status import NOT_RESPONDING_LIMIT

__all__ = ["AmlOptions", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter for transient submission errors."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): base·2^(n-1), capped, ±20%."""
        raw = min(self.cap, self.base * 2 ** (attempt - 1))
        return raw * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class AmlOptions:
    """The AML backend's knobs (from the submitter's settings)."""

    submit_threads: int = 1
    poll_threads: int = 4
    poll_seconds: float = 15.0
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    retry: RetryPolicy = RetryPolicy()
    not_responding_limit: float = NOT_RESPONDING_LIMIT
    heartbeat_seconds: float = 60.0  # how often a watched run's heartbeat is published
    cancel_attempts: int = 3  # cancels sent before a cancel that does not take is an error
    cancel_check_seconds: float = 2.0  # wait after each cancel before reading the status again
