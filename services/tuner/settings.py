"""The tuner's settings (``TUNEBUS_`` environment variables)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from shared.sandbox import DEFAULT_TRIAL_USER
from shared.settings import CommonSettings

__all__ = ["TunerSettings"]


class TunerSettings(CommonSettings):
    """Tuner settings (``TUNEBUS_`` environment variables)."""

    custom_call_timeout: float = Field(
        default=60.0, gt=0, le=86400,
        description="Seconds each call into a custom tuner or assessor may take "
                    "(TUNEBUS_CUSTOM_CALL_TIMEOUT).",
    )
    custom_memory_limit_mb: int = Field(
        default=2048, ge=0, le=1024 * 1024,
        description="Address-space limit of each custom algorithm's worker process, MiB; 0 = none "
                    "(TUNEBUS_CUSTOM_MEMORY_LIMIT_MB).",
    )
    tuner_work_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "tunebus-tuner",
        description="Where each experiment's custom algorithm code is unpacked and its worker runs "
                    "(TUNEBUS_TUNER_WORK_DIR).",
    )
    trial_user: str = Field(
        default=DEFAULT_TRIAL_USER,
        description="Who custom algorithms' workers run as when the tuner runs as root, as local "
                    "trials do (TUNEBUS_TRIAL_USER).",
    )
    tuner_concurrency: int = Field(
        default=16, ge=1, le=1000,
        description="Experiments whose messages are handled at once (TUNEBUS_TUNER_CONCURRENCY).",
    )
