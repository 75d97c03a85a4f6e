"""Dashboard settings (``TUNEBUS_`` environment variables)."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, SecretStr, field_validator

from shared.settings import CommonSettings

__all__ = ["DashboardSettings", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the dashboard on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DashboardSettings(CommonSettings):
    """Where the dashboard listens, who may use it, and how hard it reads storage."""

    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (tests)
    # Needed for every request when bound beyond loopback, and for actions always. Unset: one
    # is generated at start and printed once, in the URL to open.
    dashboard_token: SecretStr | None = None
    # Within this many seconds a state document read for one viewer serves the others too.
    dashboard_refresh_seconds: float = Field(default=0.5, ge=0.0, le=60.0)
    # How often a page asks whether its experiment changed (a conditional request).
    dashboard_poll_seconds: float = Field(default=1.0, ge=0.2, le=60.0)
    dashboard_cached_experiments: int = Field(default=32, ge=1, le=10_000)
    # Bounds on what one request reads of a trial's own (hostile) blobs.
    dashboard_log_tail_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    dashboard_results_max_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    @field_validator("dashboard_token", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        # compose passes ${TUNEBUS_DASHBOARD_TOKEN:-} through: empty means "generate one".
        return None if value == "" else value
