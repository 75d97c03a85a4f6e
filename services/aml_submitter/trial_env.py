"""What a trial gets from its environment, whichever backend runs it.

NNI's own variables (so NNI trial code and tools keep working) plus tunebus's: the
parameters, and where to write results — the URL of the attempt's own results blob with an
append-only, expiring SAS scoped to that blob. No account key ever reaches a trial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["TRIAL_RUNTIME_DIR", "TrialIdentity", "sas_lifetime", "trial_environment"]

# The folder holding the `nni` shim; it goes first on a trial's PYTHONPATH.
TRIAL_RUNTIME_DIR = Path(__file__).resolve().parents[2] / "tunebus" / "trial_runtime"

SAS_MARGIN = timedelta(hours=1)
DEFAULT_TRIAL_LIMIT = timedelta(days=7)


@dataclass(frozen=True)
class TrialIdentity:
    """Who a trial is."""

    experiment_id: str
    trial_id: str
    sequence_id: int
    attempt: int = 1


def sas_lifetime(config: dict[str, Any]) -> timedelta:
    """How long a trial's SAS lives: its time limit plus a margin.

    Without ``maxTrialDuration`` a trial has no limit of its own: at ``maxExperimentDuration``
    the running trials go on to their end (as in NNI), so the SAS lives for the longer of
    :data:`DEFAULT_TRIAL_LIMIT` and the experiment's duration.
    """
    if config.get("maxTrialDuration"):
        base = timedelta(seconds=float(config["maxTrialDuration"]))
    else:
        experiment = config.get("maxExperimentDuration")
        base = max(DEFAULT_TRIAL_LIMIT, timedelta(seconds=float(experiment or 0)))
    return base + SAS_MARGIN


def trial_environment(who: TrialIdentity, parameters: dict[str, Any], *, metrics_url: str,
                      output_dir: str, platform: str) -> dict[str, str]:
    """The environment variables a trial runs with (added to the backend's base environment)."""
    return {
        "NNI_PLATFORM": platform,
        "NNI_EXP_ID": who.experiment_id,
        "NNI_TRIAL_JOB_ID": who.trial_id,
        "NNI_TRIAL_SEQ_ID": str(who.sequence_id),
        "NNI_OUTPUT_DIR": output_dir,
        "TUNEBUS_TRIAL_ATTEMPT": str(who.attempt),
        "TUNEBUS_PARAMETERS": json.dumps(parameters, separators=(",", ":")),
        "TUNEBUS_METRICS_URL": metrics_url,
    }
