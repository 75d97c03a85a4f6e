"""The dispatcher's settings (``TUNEBUS_`` environment variables)."""

from __future__ import annotations

from dataclasses import fields

from pydantic import Field

from shared.settings import CommonSettings

from .lifecycle import Policy

__all__ = ["DispatcherSettings"]


class DispatcherSettings(CommonSettings):
    """Dispatcher settings (``TUNEBUS_`` environment variables)."""

    # The lifecycle's timings (what each means: Policy), defaulting to Policy's.
    tick_seconds: float = Policy.tick_seconds
    tick_idle_seconds: float = Policy.tick_idle_seconds
    heartbeat_timeout: float = Policy.heartbeat_timeout
    kill_grace: float = Policy.kill_grace
    max_attempts: int = Policy.max_attempts
    claim_timeout: float = Policy.claim_timeout
    ended_timeout: float = Policy.ended_timeout
    remote_silence_timeout: float = Policy.remote_silence_timeout
    suggest_timeout: float = Policy.suggest_timeout
    max_reasks: int = Policy.max_reasks
    tick_stall: float = Policy.tick_stall
    tick_renew: float = Policy.tick_renew
    # How often every replica lists the running experiments and re-arms any whose tick chain
    # was lost (with a broker crash); also how a restarted dispatcher finds its experiments.
    watchdog_seconds: float = 10.0
    suggestion_lookahead: int = 1  # suggestions asked for beyond the free slots
    # Experiments whose messages one replica handles at once (each experiment's one at a time).
    dispatcher_concurrency: int = Field(default=8, ge=1, le=1000)

    def policy(self) -> Policy:
        """The lifecycle's timings, from the settings of the same names."""
        return Policy(**{f.name: getattr(self, f.name) for f in fields(Policy)})
