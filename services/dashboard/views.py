"""What the dashboard shows, computed from an experiment's state. Pure: no I/O.

Every answer is bounded whatever the experiment's size: a page of trials (server-side
filtering, sorting and paging over an index built once per state document), a scatter
down-sampled to a fixed number of points, parallel coordinates over at most so many lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.messages import TrialStatus
from shared.secrets_mask import redact_secrets
from shared.state import ExperimentState, TrialRecord, best_trial

__all__ = [
    "MAX_PAGE_SIZE",
    "ExperimentSummary",
    "QueryError",
    "TrialIndex",
    "TrialQuery",
    "experiment_limits",
    "experiment_row",
    "metric_series",
    "parallel_coordinates",
    "parse_trial_query",
    "query_trials",
    "shown_config",
    "trial_row",
]

MAX_PAGE_SIZE = 200
MAX_SEARCH_CHARS = 200
_STATUSES = frozenset(s.value for s in TrialStatus)


class QueryError(ValueError):
    """A request parameter that cannot be used; the message names it and why."""


# ---------------------------------------------------------------- experiments


def experiment_limits(config: Mapping[str, Any], state: ExperimentState | None) -> dict[str, float | None]:
    """trialConcurrency, maxTrialNumber and maxExperimentDuration (seconds), as they hold now:
    those changed by an update win over the experiment file's."""
    merged = {**config, **(state.updated_limits if state is not None else {})}

    def number(name: str) -> float | None:
        value = merged.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return {name: number(name) for name in ("trialConcurrency", "maxTrialNumber", "maxExperimentDuration")}


@dataclass(frozen=True)
class ExperimentSummary:
    """What the experiments list shows of one experiment: its state without the trials, and
    their counts and best. Small: the list keeps one per experiment, however many trials."""

    state: ExperimentState
    trials_done: int
    trials_total: int
    best: float | None
    best_trial: str | None
    counts: dict[str, int]

    @classmethod
    def of(cls, state: ExperimentState) -> ExperimentSummary:
        best = best_trial(state)
        return cls(state.model_copy(update={"trials": {}, "outbox": [], "ready": []}),
                   state.ended_total, state.trials_created,
                   None if best is None else best.final_value, None if best is None else best.trial_id,
                   state.trials_by_status())


def experiment_row(experiment_id: str, summary: ExperimentSummary | None, config: Mapping[str, Any],
                   now: datetime) -> dict[str, Any]:
    """One experiment as the list shows it: status, progress against its limits, best value."""
    state = None if summary is None else summary.state
    limits = experiment_limits(config, state)
    name = config.get("experimentName")
    row: dict[str, Any] = {
        "id": experiment_id, "name": name if isinstance(name, str) else None,
        "status": "INITIALIZED", "reason": None, "trials_done": 0, "trials_total": 0,
        "max_trials": limits["maxTrialNumber"], "elapsed_seconds": None,
        "max_duration_seconds": limits["maxExperimentDuration"], "best": None, "best_trial": None,
        "started_at": None, "ended_at": None, "optimize_mode": None,
    }
    if summary is None or state is None:
        return row
    row.update(
        status=state.status.value, reason=state.reason,
        trials_done=summary.trials_done, trials_total=summary.trials_total,
        elapsed_seconds=round(state.elapsed_seconds(now), 3),
        best=summary.best, best_trial=summary.best_trial,
        started_at=state.started_at.isoformat(),
        ended_at=None if state.ended_at is None else state.ended_at.isoformat(),
        optimize_mode=state.optimize_mode,
    )
    return row


def shown_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment file as the page shows it: every secret masked, whatever its key.

    ``experiment.json`` holds the wire form (no account key); masking again also catches a
    connection string or SAS URL someone put under an innocent key.
    """
    shown = redact_secrets(dict(config))
    return shown if isinstance(shown, dict) else {}


# ---------------------------------------------------------------- trials


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def trial_row(trial: TrialRecord, now: datetime | None = None) -> dict[str, Any]:
    """One trial as the table and the detail page show it."""
    duration = trial.duration_seconds(now)
    return {
        "trial_id": trial.trial_id, "sequence_id": trial.sequence_id, "status": trial.status.value,
        "final_value": trial.final_value, "last_intermediate": trial.last_intermediate,
        "metric_count": trial.metric_count, "attempt": trial.attempt,
        "duration_seconds": None if duration is None else round(duration, 3),
        "started_at": None if trial.started_at is None else trial.started_at.isoformat(),
        "ended_at": None if trial.ended_at is None else trial.ended_at.isoformat(),
        "parameters": trial.parameters, "ended": trial.ended,
    }


@dataclass(frozen=True)
class TrialQuery:
    """Which page of which trials, in which order."""

    statuses: frozenset[str] = frozenset()
    search: str = ""
    sort: str = "sequence"
    descending: bool = False
    offset: int = 0
    limit: int = 50


def _bounded_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise QueryError(f"{name}: want a whole number from {low} to {high}, got {raw[:20]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise QueryError(f"{name}: want a whole number from {low} to {high}, got {value}")
    return value


def parse_trial_query(params: Mapping[str, str]) -> TrialQuery:
    """A :class:`TrialQuery` from URL parameters ``status`` (comma-separated), ``q``, ``sort``
    (``-`` first for descending), ``offset`` and ``limit``; :class:`QueryError` names a bad one."""
    statuses = frozenset(s for s in params.get("status", "").upper().split(",") if s)
    unknown = statuses - _STATUSES
    if unknown:
        raise QueryError(f"status: unknown {sorted(unknown)[0][:30]!r}; use {', '.join(sorted(_STATUSES))}")
    search = params.get("q", "")
    if len(search) > MAX_SEARCH_CHARS:
        raise QueryError(f"q: at most {MAX_SEARCH_CHARS} characters, got {len(search)}")
    sort = params.get("sort", "sequence")
    descending = sort.startswith("-")
    sort = sort.removeprefix("-")
    if sort not in _SORT_KEYS and not (sort.startswith("param.") and 6 < len(sort) <= 100):
        raise QueryError(f"sort: use one of {', '.join(sorted(_SORT_KEYS))} or param.<name>, "
                         f"got {sort[:40]!r}")
    return TrialQuery(statuses, search.strip().lower(), sort, descending,
                      _bounded_int(params, "offset", 0, 0, 10_000_000),
                      _bounded_int(params, "limit", 50, 1, MAX_PAGE_SIZE))


def _duration_key(trial: TrialRecord) -> float | None:
    return trial.duration_seconds()


_SORT_KEYS: dict[str, Callable[[TrialRecord], Any]] = {
    "sequence": lambda t: t.sequence_id,
    "trial_id": lambda t: t.trial_id,
    "status": lambda t: t.status.value,
    "final": lambda t: t.final_value,
    "latest": lambda t: t.last_intermediate,
    "metrics": lambda t: t.metric_count,
    "duration": _duration_key,
    "started": lambda t: t.started_at,
}


def _param_key(name: str) -> Callable[[TrialRecord], Any]:
    def key(trial: TrialRecord) -> Any:
        value = trial.parameters.get(name)
        if value is None:
            return None
        # Numbers before text: one parameter may hold both (a choice of mixed values).
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, _compact(value) if isinstance(value, dict | list) else str(value))

    return key


@dataclass
class TrialIndex:
    """The trials of one state document, prepared once for many queries."""

    trials: list[TrialRecord]
    search_text: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, state: ExperimentState) -> TrialIndex:
        trials = state.by_sequence()
        return cls(trials, [_compact(t.parameters).lower() for t in trials])


def query_trials(index: TrialIndex, query: TrialQuery) -> dict[str, Any]:
    """One page of the trials matching ``query``: ``total`` (all trials), ``matched``, ``items``."""
    picked = [t for t, text in zip(index.trials, index.search_text, strict=True)
              if (not query.statuses or t.status.value in query.statuses)
              and (not query.search or query.search in text)]
    if query.sort != "sequence" or query.descending:
        key = _param_key(query.sort[6:]) if query.sort.startswith("param.") else _SORT_KEYS[query.sort]
        present = [t for t in picked if key(t) is not None]
        missing = [t for t in picked if key(t) is None]  # last, whichever the direction
        present.sort(key=key, reverse=query.descending)
        picked = present + missing
    page = picked[query.offset:query.offset + query.limit]
    return {"total": len(index.trials), "matched": len(picked), "offset": query.offset,
            "limit": query.limit, "items": [trial_row(t) for t in page]}


# ---------------------------------------------------------------- metric over trials


def _better(mode: str) -> Callable[[float, float], bool]:
    return (lambda a, b: a > b) if mode == "maximize" else (lambda a, b: a < b)


def metric_series(state: ExperimentState, max_points: int = 2000) -> dict[str, Any]:
    """The default metric over trial sequence (colour by status) and the best-so-far curve.

    Beyond ``max_points`` the scatter keeps, per bucket of consecutive trials, the lowest and
    the highest value, plus every trial that improved the best: the cloud's envelope and the
    curve's steps stay exact.
    """
    scored = [t for t in state.by_sequence() if t.final_value is not None]
    better = _better(state.optimize_mode)
    best_seq: list[int] = []
    best_val: list[float] = []
    improving: set[str] = set()
    for trial in scored:
        value = trial.final_value
        assert value is not None
        if not best_val or better(value, best_val[-1]):
            best_seq.append(trial.sequence_id)
            best_val.append(value)
            improving.add(trial.trial_id)
    if scored and best_seq[-1] != scored[-1].sequence_id:
        best_seq.append(scored[-1].sequence_id)  # the curve runs to the last scored trial
        best_val.append(best_val[-1])
    shown = scored if len(scored) <= max_points else _envelope(scored, max_points, improving)
    return {
        "optimize_mode": state.optimize_mode, "scored": len(scored), "downsampled": len(shown) < len(scored),
        "scatter": {"sequence": [t.sequence_id for t in shown], "value": [t.final_value for t in shown],
                    "status": [t.status.value for t in shown], "trial_id": [t.trial_id for t in shown]},
        "best": {"sequence": best_seq, "value": best_val},
    }


def _envelope(scored: Sequence[TrialRecord], max_points: int, keep: set[str]) -> list[TrialRecord]:
    buckets = max(1, max_points // 2)
    size = math.ceil(len(scored) / buckets)
    chosen: dict[str, TrialRecord] = {t.trial_id: t for t in scored if t.trial_id in keep}
    for start in range(0, len(scored), size):
        bucket = scored[start:start + size]
        chosen.setdefault(min(bucket, key=_final).trial_id, min(bucket, key=_final))
        chosen.setdefault(max(bucket, key=_final).trial_id, max(bucket, key=_final))
    return sorted(chosen.values(), key=lambda t: t.sequence_id)


def _final(trial: TrialRecord) -> float:
    return trial.final_value if trial.final_value is not None else math.nan


# ---------------------------------------------------------------- parallel coordinates


_LOG_TYPES = frozenset({"loguniform", "qloguniform", "lognormal", "qlognormal"})


def _label(value: Any) -> str:
    if isinstance(value, dict):
        name = value.get("_name")
        return str(name) if name is not None else _compact(value)
    return _compact(value) if isinstance(value, list) else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _dimension(name: str, spec: Mapping[str, Any] | None, values: list[Any]) -> dict[str, Any]:
    """One axis: a choice (labels at 0..n-1), a log-scale number (log10, labelled in powers of
    ten) or a plain number."""
    kind = str(spec.get("_type")) if spec else ""
    numbers = [_number(v) for v in values]
    if kind == "choice" or any(n is None and v is not None for n, v in zip(numbers, values, strict=True)):
        options = [_label(v) for v in spec.get("_value", [])] if kind == "choice" and spec else []
        for label in (_label(v) for v in values if v is not None):
            if label not in options:
                options.append(label)
        position = {label: i for i, label in enumerate(options)}
        return {"name": name, "kind": "choice", "ticktext": options, "tickvals": list(range(len(options))),
                "values": [None if v is None else position[_label(v)] for v in values]}
    if kind in _LOG_TYPES and all(n is None or n > 0 for n in numbers):
        logs = [None if n is None else math.log10(n) for n in numbers]
        present = [x for x in logs if x is not None]
        ticks = list(range(math.floor(min(present)), math.ceil(max(present)) + 1)) if present else []
        return {"name": name, "kind": "log", "values": logs, "tickvals": ticks,
                "ticktext": [f"1e{t}" for t in ticks]}
    return {"name": name, "kind": "number", "values": numbers}


def parallel_coordinates(state: ExperimentState, search_space: Mapping[str, Any], *,
                         top_percent: float = 100.0, max_lines: int = 1000) -> dict[str, Any]:
    """Parameters and the metric of the best ``top_percent`` % of the scored trials, one line
    each; beyond ``max_lines``, lines evenly spaced in rank (the best always among them)."""
    scored = [t for t in state.trials.values() if t.final_value is not None]
    scored.sort(key=_final, reverse=state.optimize_mode == "maximize")
    kept = scored[:max(1, math.ceil(len(scored) * top_percent / 100))] if scored else []
    if len(kept) > max_lines:
        step = len(kept) / max_lines
        kept = [kept[int(i * step)] for i in range(max_lines)]
    names = [n for n in search_space if isinstance(n, str)] or sorted(
        {k for t in kept for k in t.parameters})
    dimensions = [_dimension(name, search_space.get(name) if isinstance(search_space.get(name), Mapping)
                             else None, [t.parameters.get(name) for t in kept]) for name in names]
    return {"scored": len(scored), "shown": len(kept), "top_percent": top_percent,
            "optimize_mode": state.optimize_mode, "dimensions": dimensions,
            "metric": [t.final_value for t in kept], "trial_id": [t.trial_id for t in kept]}
