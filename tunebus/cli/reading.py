"""The commands that only read: ``experiment list/show``, ``trial ls/log``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from shared.layout import Layout

from .common import (
    EXIT_OK,
    EXIT_USAGE,
    PENDING_STATUS,
    CliError,
    _check_id,
    _compact,
    _format_counts,
    _format_value,
    experiment_summary,
    format_seconds,
    pending_summary,
)
from .output import _Output, _table, _utc
from .storage import _run_with_storage, _state_or_unknown, _Storage

if TYPE_CHECKING:
    from shared.records import ExperimentDocument
    from shared.state import ExperimentState, TrialRecord


def cmd_experiment_list(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus experiment list``: every experiment with its status, trial counts and start time."""
    import asyncio


    async def body(storage: _Storage) -> list[tuple[str, ExperimentState | None]]:
        ids = await storage.experiment_ids()
        gate = asyncio.Semaphore(16)

        async def one(experiment_id: str) -> tuple[str, ExperimentState | None]:
            async with gate:
                return experiment_id, await storage.read_state(experiment_id)

        return list(await asyncio.gather(*(one(i) for i in ids)))

    found = _run_with_storage(body)
    found.sort(key=lambda item: (item[1] is None, item[1].started_at.timestamp() if item[1] else 0, item[0]))
    if args.json:
        output.result([experiment_summary(s) if s else pending_summary(i) for i, s in found])
        return EXIT_OK
    if not found:
        print("no experiments", file=output.out)
        return EXIT_OK
    rows = [["ID", "STATUS", "TRIALS", "BEST", "STARTED"]]
    for experiment_id, state in found:
        if state is None:
            rows.append([experiment_id, PENDING_STATUS, "-", "-", "-"])
            continue
        summary = experiment_summary(state)
        best = summary["best"]
        rows.append([experiment_id, summary["status"], _format_counts(summary["trials"]),
                     _format_value(best["value"]) if best else "-", _utc(state.started_at)])
    _table(rows, output.out)
    return EXIT_OK


def cmd_experiment_show(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus experiment show ID``: the summary, plus config highlights in plain mode."""
    experiment_id = _check_id(args.id)

    async def body(storage: _Storage) -> tuple[ExperimentState | None, ExperimentDocument | None]:
        state = await _state_or_unknown(storage, experiment_id)
        return state, await storage.read_experiment_doc(experiment_id)

    state, doc = _run_with_storage(body)
    if args.json:
        output.result(experiment_summary(state) if state else pending_summary(experiment_id))
        return EXIT_OK
    print("\n".join(_show_lines(experiment_id, state, doc.config if doc else {})), file=output.out)
    return EXIT_OK


def _show_lines(experiment_id: str, state: ExperimentState | None, config: dict[str, Any]) -> list[str]:
    from shared.state import best_trial

    if state is not None:
        config = {**config, **state.updated_limits}  # limits changed by tunebus update win
    rows: list[tuple[str, str]] = [("experiment", experiment_id)]
    if config.get("experimentName"):
        rows.append(("name", str(config["experimentName"])))
    if state is None:
        rows.append(("status", f"{PENDING_STATUS} (not started by the dispatcher yet)"))
    else:
        summary = experiment_summary(state)
        rows.append(("status", summary["status"]))
        if state.reason:
            rows.append(("reason", state.reason))
        rows += [("started", _utc(state.started_at))]
        if state.resumed_at is not None:
            rows.append(("resumed", _utc(state.resumed_at)))
        rows.append(("ended", _utc(state.ended_at)))
        # Running time, as maxExperimentDuration counts it: not while it was stopped.
        rows.append(("elapsed", format_seconds(state.elapsed_seconds(_now()))))
        rows.append(("optimize", state.optimize_mode))
    tuner = config.get("tuner") or {}
    if tuner:
        rows.append(("tuner", str(tuner.get("name") or tuner.get("className") or "-")))
    if config.get("trialConcurrency"):
        rows.append(("concurrency", str(config["trialConcurrency"])))
    if config.get("maxTrialNumber"):
        rows.append(("max trials", str(config["maxTrialNumber"])))
    if config.get("maxExperimentDuration"):
        rows.append(("max duration", format_seconds(float(config["maxExperimentDuration"]))))
    platform = (config.get("trainingService") or {}).get("platform")
    if platform:
        rows.append(("platform", str(platform)))
    if state is not None:
        counts = experiment_summary(state)["trials"]
        total = sum(counts.values())
        rows.append(("trials", f"{total}" + (f" ({_format_counts(counts)})" if counts else "")))
        best = best_trial(state)
        rows.append(("best", "-" if best is None else
                     f"trial {best.trial_id} (#{best.sequence_id}) {_format_value(best.final_value)} "
                     f"{_compact(best.parameters)}"))
    width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(width)}  {v}" for k, v in rows]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def trial_row(trial: TrialRecord) -> dict[str, Any]:
    """One trial as ``trial ls --json`` shows it."""
    return {
        "trial_id": trial.trial_id,
        "sequence_id": trial.sequence_id,
        "status": trial.status.value,
        "final_value": trial.final_value,
        "last_intermediate": trial.last_intermediate,
        "metric_count": trial.metric_count,
        "duration_seconds": trial.duration_seconds(),
        "parameters": trial.parameters,
        "error": trial.error,
        "job_url": trial.job_url,
    }


def cmd_trial_ls(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus trial ls ID``: a table of the experiment's trials in sequence order (``--last N``:
    the running ones and the N that ended last, reading only the ended log's chunks that hold them)."""
    experiment_id = _check_id(args.id)
    last = getattr(args, "last", None)
    if last is not None and last < 0:
        raise CliError(f"--last: 0 or more trials, not {last}", EXIT_USAGE)
    state = _run_with_storage(lambda storage: _state_or_unknown(storage, experiment_id, full=True, last=last))
    trials = state.by_sequence() if state is not None else []
    if args.json:
        output.result([trial_row(t) for t in trials])
        return EXIT_OK
    if not trials:
        print(f"experiment {experiment_id} has no trials yet", file=output.out)
        return EXIT_OK
    rows = [["TRIAL", "SEQ", "STATUS", "FINAL", "LATEST", "DURATION", "PARAMETERS"]]
    notes: dict[int, list[str]] = {}
    for index, trial in enumerate(trials, start=1):
        duration = trial.duration_seconds()
        # The last intermediate result and how many results it had reported (live while it runs).
        latest = ("-" if trial.last_intermediate is None
                  else f"{_format_value(trial.last_intermediate)} ({trial.metric_count})")
        rows.append([trial.trial_id, str(trial.sequence_id), trial.status.value,
                     _format_value(trial.final_value), latest,
                     "-" if duration is None else format_seconds(duration), _compact(trial.parameters)])
        notes[index] = ([f"    error: {trial.error}"] if trial.error else []) + (
            [f"    job: {trial.job_url}"] if trial.job_url else [])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=output.out)
        for note in notes.get(index, []):
            print(note, file=output.out)
    return EXIT_OK


def _find_trial(state: ExperimentState | None, experiment_id: str, trial_id: str) -> TrialRecord:
    trial = None if state is None else state.trials.get(trial_id)
    if trial is None:
        raise CliError(f"experiment {experiment_id} has no trial {trial_id!r} (see: tunebus trial ls "
                       f"{experiment_id})", EXIT_USAGE)
    return trial


def cmd_trial_log(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus trial log ID TRIAL``: a local trial's stdout (or stderr), as uploaded at its end."""
    experiment_id = _check_id(args.id)
    stream = "stderr" if args.stderr else "stdout"

    async def body(storage: _Storage) -> tuple[TrialRecord, int, bytes | None]:
        state = await _state_or_unknown(storage, experiment_id, full=True)
        trial = _find_trial(state, experiment_id, args.trial)
        attempt = args.attempt or trial.attempt
        if not 1 <= attempt <= trial.attempt:
            raise CliError(f"trial {trial.trial_id} has attempts 1 to {trial.attempt}, not {attempt}",
                           EXIT_USAGE)
        log = await storage.read_blob(Layout(experiment_id).log_blob(trial.trial_id, stream, attempt))
        return trial, attempt, log

    trial, attempt, log = _run_with_storage(body)
    if log is not None:
        output.out.write(log.decode("utf-8", errors="replace"))
        output.out.flush()
        return EXIT_OK
    where = f"trial {trial.trial_id} (attempt {attempt})"
    if trial.job_url:
        output.note(f"{where} ran on Azure ML: its {stream} is with the run: {trial.job_url}")
    elif not trial.ended and attempt == trial.attempt:
        output.note(f"{where} is {trial.status.value}: its {stream} is uploaded when it ends")
    else:
        output.note(f"{where} wrote nothing to {stream}")
    return EXIT_OK
