"""What every command shares: exit codes, experiment ids, CliError, summaries and their text."""

from __future__ import annotations

import json
import re
import string
from typing import TYPE_CHECKING, Any

from shared.statuses import TrialStatus

if TYPE_CHECKING:
    from shared.state import ExperimentState


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The status shown for an experiment published but not yet started by the dispatcher (NNI's word).
PENDING_STATUS = "INITIALIZED"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_STATUS_ORDER = tuple(TrialStatus)  # how trial counts are listed
_POLL_SECONDS = 1.0  # state.json is re-read at least this often while waiting
_REFRESH_SECONDS = 0.25  # ...and at most this often, unless the experiment's status changed
_CONNECT_TIMEOUT = 10.0
_STORAGE_TIMEOUT = 60.0  # seconds without progress on one blob request (uploads are up to 100 MB)


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def new_experiment_id() -> str:
    """A fresh experiment id: 8 random lowercase letters and digits, like NNI's."""
    import secrets

    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _check_id(experiment_id: str) -> str:
    if not _ID_PATTERN.match(experiment_id):
        raise CliError(f"invalid experiment id {experiment_id!r}: use 1-64 letters, digits, '_' or '-'",
                       EXIT_USAGE)
    return experiment_id


def _ordered_counts(counts: dict[str, int]) -> dict[str, int]:
    rank = {str(status): i for i, status in enumerate(_STATUS_ORDER)}
    return {k: counts[k] for k in sorted(counts, key=lambda s: (rank.get(s, len(rank)), s)) if counts[k]}


def experiment_summary(state: ExperimentState) -> dict[str, Any]:
    """The one-object JSON summary of an experiment: id, status (and why, when there is a reason),
    trials by status, best trial."""
    from shared.state import best_trial

    best = best_trial(state)
    return {
        "id": state.experiment_id,
        "status": state.status.value,
        "reason": state.reason,
        "trials": _ordered_counts(state.trials_by_status()),
        "best": None if best is None else {
            "trial_id": best.trial_id, "value": best.final_value, "parameters": best.parameters,
        },
    }


def pending_summary(experiment_id: str) -> dict[str, Any]:
    """The summary of an experiment the dispatcher has not started yet."""
    return {"id": experiment_id, "status": PENDING_STATUS, "reason": None, "trials": {}, "best": None}


def format_seconds(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h07m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "none yet"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)


def progress_line(state: ExperimentState | None, elapsed: float | None) -> str:
    """One line of progress: status, trials by status, best so far (and elapsed, when given)."""
    tail = "" if elapsed is None else f"  [{format_seconds(elapsed)}]"
    if state is None:
        return f"{PENDING_STATUS}  waiting for the dispatcher to start the experiment{tail}"
    summary = experiment_summary(state)
    best = summary["best"]
    best_text = "-" if best is None else f"{_format_value(best['value'])} ({best['trial_id']})"
    return f"{summary['status']}  trials: {_format_counts(summary['trials'])}  best: {best_text}{tail}"


def summary_text(state: ExperimentState, elapsed: float) -> str:
    """The closing summary of ``create --wait`` in plain mode."""
    from shared.state import best_trial

    summary = experiment_summary(state)
    total = sum(summary["trials"].values())
    lines = [f"experiment {state.experiment_id} {summary['status']} after {format_seconds(elapsed)}"]
    if state.reason:
        lines.append(f"reason: {state.reason}")
    lines.append(f"trials: {total}" + (f" ({_format_counts(summary['trials'])})" if total else ""))
    best = best_trial(state)
    if best is not None:
        lines.append(f"best: trial {best.trial_id} (#{best.sequence_id}) {_format_value(best.final_value)} "
                     f"{_compact(best.parameters)}")
    else:
        lines.append("best: no trial reported a final result")
    lines.append(f"details: tunebus trial ls {state.experiment_id}")
    return "\n".join(lines)


def _masked_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def blob_endpoint(connection_string: str) -> str:
    """The blob service URL a connection string points at (never its key)."""
    from shared.blob_rest import parse_connection_string

    fields = parse_connection_string(connection_string)
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    if "BlobEndpoint" in fields:
        return fields["BlobEndpoint"].rstrip("/")
    protocol = fields.get("DefaultEndpointsProtocol", "https")
    suffix = fields.get("EndpointSuffix", "core.windows.net")
    return f"{protocol}://{fields.get('AccountName', '?')}.blob.{suffix}"


async def _close_quietly(*things: Any) -> None:
    import asyncio

    for thing in things:
        if thing is None:
            continue
        try:
            await asyncio.wait_for(thing.close(), 5.0)
        except (Exception, asyncio.CancelledError):  # closing must not hide the real outcome
            pass
