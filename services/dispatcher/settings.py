"""The dispatcher's settings (``TUNEBUS_`` environment variables)."""

from __future__ import annotations

from dataclasses import fields

from pydantic import Field

from shared.settings import CommonSettings

from .lifecycle import Policy

__all__ = ["DispatcherSettings"]


class DispatcherSettings(CommonSettings):
    """Dispatcher settings (``TUNEBUS_`` environment variables)."""

    tick_seconds: float = 1.0
    heartbeat_timeout: float = 30.0
    kill_grace: float = 60.0
    max_attempts: int = 3
    claim_timeout: float = 60.0
    ended_timeout: float = 30.0
    remote_silence_timeout: float = 600.0
    suggest_timeout: float = 120.0
    max_reasks: int = 5
    tick_stall: float = 10.0
    # How often every replica lists the running experiments and re-arms any whose tick chain
    # was lost (with a broker crash); also how a restarted dispatcher finds its experiments.
    watchdog_seconds: float = 10.0
    suggestion_lookahead: int = 1  # suggestions asked for beyond the free slots
    # Experiments whose messages one replica handles at once (each experiment's one at a time).
    dispatcher_concurrency: int = Field(default=8, ge=1, le=1000)

    def policy(self) -> Policy:
        """The lifecycle's timings, from the settings of the same names."""
        return Policy(**{f.name: getattr(self, f.name) for f in fields(Policy)})
