"""The ``tunebus`` command: create experiments, follow them, list, show, stop.

``tunebus create --config FILE`` validates an NNI v2 experiment file, uploads the trial code
and publishes ``experiment.start``; ``--wait`` follows the experiment to its end. The other
commands read the dispatcher's state documents in blob storage. Settings come from
``TUNEBUS_AMQP_URL``, ``TUNEBUS_STORAGE_CONNECTION_STRING`` and ``TUNEBUS_STORAGE_CONTAINER``.

Exit codes: 0 success (with ``--wait``: the experiment ended DONE or STOPPED), 1 failure (the
experiment ended in ERROR, or the broker or storage cannot be reached), 2 invalid input (a bad
config, an unknown experiment id), 130 interrupted.

Startup stays fast: pydantic and aio-pika are imported by the commands that need them, never
for ``--help``; blob storage is reached through :mod:`shared.blob_rest` (the standard library
alone), so no command imports the Azure SDK.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from shared.layout import Layout
from shared.secrets_mask import install_log_masking, mask_secrets, redact_secrets

if TYPE_CHECKING:
    from datetime import datetime

    from shared.blob_rest import BlobRestClient
    from shared.bus import Bus
    from shared.messages import Message
    from shared.settings import CommonSettings
    from shared.state import ExperimentState, TrialRecord

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "experiment_summary",
    "main",
    "new_experiment_id",
    "pending_summary",
    "progress_line",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The status shown for an experiment published but not yet started by the dispatcher (NNI's word).
PENDING_STATUS = "INITIALIZED"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_STATUS_ORDER = ("WAITING", "RUNNING", "SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED",
                 "EARLY_STOPPED")
_ENDED = ("DONE", "STOPPED", "ERROR")
_RESUMABLE = ("STOPPED", "ERROR", "DONE")
_POLL_SECONDS = 1.0  # state.json is re-read at least this often while waiting
_REFRESH_SECONDS = 0.25  # ...and at most this often, unless the experiment's status changed
_CONNECT_TIMEOUT = 10.0
_STORAGE_TIMEOUT = 60.0  # seconds without progress on one blob request (uploads are up to 100 MB)


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- pure helpers


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
    rank = {status: i for i, status in enumerate(_STATUS_ORDER)}
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


# ---------------------------------------------------------------- connections


class _Storage:
    """The CLI's access to the system of record: the stdlib REST client, off the event loop."""

    def __init__(self, settings: CommonSettings) -> None:
        from shared.blob_rest import BlobRestClient

        self.endpoint = blob_endpoint(settings.storage_connection_string)
        self.container_name = settings.storage_container
        try:
            self.client: BlobRestClient = BlobRestClient.from_connection_string(
                settings.storage_connection_string, settings.storage_container, timeout=_STORAGE_TIMEOUT
            )
        except ValueError as exc:
            raise CliError(f"TUNEBUS_STORAGE_CONNECTION_STRING: {exc}") from None

    async def open(self) -> _Storage:
        """Connect now: fail fast, in one line, when nothing answers (rather than at the upload),
        and set the connection up while the broker's is, off the path to publishing."""
        import asyncio

        try:
            await asyncio.to_thread(self.client.connect, _CONNECT_TIMEOUT)
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise CliError(f"cannot reach blob storage at {self.endpoint}: {reason}") from None
        return self

    async def close(self) -> None:
        self.client.close()

    def failure(self, exc: Exception) -> CliError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CliError(f"blob storage at {self.endpoint}: {first}")

    async def read_state(self, experiment_id: str) -> ExperimentState | None:
        import asyncio

        from shared.state import ExperimentState

        found = await asyncio.to_thread(self.client.get_json, Layout(experiment_id).state_doc)
        return None if found is None else ExperimentState.model_validate(found)

    async def read_blob(self, name: str) -> bytes | None:
        import asyncio

        return await asyncio.to_thread(self.client.get_blob, name)

    async def read_experiment_doc(self, experiment_id: str) -> dict[str, Any] | None:
        import asyncio

        doc = Layout(experiment_id).experiment_doc
        found = await asyncio.to_thread(self.client.get_json, doc)
        return found if isinstance(found, dict) else None

    async def upload(self, name: str, data: bytes, content_type: str, *, create_only: bool = False) -> None:
        """Write a blob, creating the container first if the write finds none.

        ``create_only``: fail (BlobRestError, BlobAlreadyExists) rather than overwrite.
        """
        import asyncio

        from shared.blob_rest import BlobRestError

        try:
            await asyncio.to_thread(self.client.put_blob, name, data, content_type, create_only=create_only)
        except BlobRestError as exc:
            if exc.code != "ContainerNotFound":
                raise
            # Only a fresh deployment lacks it: one round trip saved on every other create.
            await asyncio.to_thread(self.client.ensure_container)
            await asyncio.to_thread(self.client.put_blob, name, data, content_type, create_only=create_only)

    async def exists(self, experiment_id: str) -> bool:
        """Whether anything was ever stored for the experiment (it may not be started yet)."""
        names = await self._list(Layout(experiment_id).root + "/", limit=1)
        return bool(names)

    async def experiment_ids(self) -> list[str]:
        """Every experiment folder in the container (one level listing, not every blob)."""
        names = await self._list("experiments/", delimiter="/")
        ids = (n.removeprefix("experiments/").rstrip("/") for n in names if n.endswith("/"))
        return sorted(i for i in ids if i)

    async def _list(self, prefix: str, delimiter: str | None = None, limit: int | None = None) -> list[str]:
        """Names under ``prefix``; none when the container does not exist yet."""
        import asyncio

        from shared.blob_rest import BlobRestError

        try:
            return await asyncio.to_thread(self.client.list_names, prefix, delimiter,
                                           page_size=limit, limit=limit)
        except BlobRestError as exc:
            if exc.status == 404:
                return []
            raise


async def _connect_bus(settings: CommonSettings) -> Bus:
    import asyncio

    from shared.bus import Bus

    bus = Bus(settings.amqp_url, service="cli")
    try:
        await asyncio.wait_for(bus.connect(attempts=1), _CONNECT_TIMEOUT)
    except Exception as exc:
        raise CliError(f"cannot reach the broker at {_masked_url(settings.amqp_url)}: "
                       f"{_exception_line(exc)}") from None
    return bus


def _exception_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _EventWatcher:
    """An exclusive, auto-deleted, server-named queue of one experiment's status and trial-end events.

    Events only say "something changed": the state document is what gets read and shown.
    """

    ROUTING_KEYS = ("experiment.status", "trial.ended")

    def __init__(self, experiment_id: str) -> None:
        import asyncio

        self.experiment_id = experiment_id
        self.changed = asyncio.Event()  # any event of the experiment
        self.status_changed = asyncio.Event()  # its experiment.status: read at once
        self._connection: Any = None

    async def start(self, url: str) -> None:
        import asyncio

        import aio_pika

        from shared.topology import EVENTS_EXCHANGE

        try:
            self._connection = await asyncio.wait_for(
                aio_pika.connect_robust(url, client_properties={"connection_name": "cli-watch"}),
                _CONNECT_TIMEOUT,
            )
        except Exception as exc:
            raise CliError(f"cannot reach the broker at {_masked_url(url)}: {_exception_line(exc)}") from None
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in self.ROUTING_KEYS:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._on_event, no_ack=True)

    async def _on_event(self, delivery: Any) -> None:
        try:
            experiment_id = json.loads(delivery.body).get("experiment_id")
        except (ValueError, AttributeError):
            return
        if experiment_id == self.experiment_id:
            self.changed.set()
            if delivery.routing_key == "experiment.status":
                self.status_changed.set()

    def clear(self) -> None:
        self.changed.clear()
        self.status_changed.clear()

    async def wait(self, timeout: float, last_read: float) -> None:
        """Until an event for the experiment arrives, or ``timeout`` seconds; then, unless the
        experiment's status changed, until ``_REFRESH_SECONDS`` after ``last_read``: trial ends
        only move the progress line, and re-reading the state document for each of them costs
        the storage a request per trial."""
        import asyncio

        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
            left = _REFRESH_SECONDS - (time.monotonic() - last_read)
            if left > 0 and not self.status_changed.is_set():
                await asyncio.wait_for(self.status_changed.wait(), left)
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


# ---------------------------------------------------------------- output


class _MaskedStream(io.TextIOBase):
    """A text stream that masks secrets (``shared.secrets_mask``) in everything written to it:
    every line the CLI prints (errors, reasons, configs, trial logs) goes through one."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(mask_secrets(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def _masked(stream: TextIO) -> TextIO:
    return cast(TextIO, _MaskedStream(stream))


@dataclass
class _Output:
    """Where things go: stdout for results, stderr for notes; ``--json`` keeps stdout to one object."""

    json_mode: bool = False
    out: TextIO = field(default_factory=lambda: _masked(sys.stdout))
    err: TextIO = field(default_factory=lambda: _masked(sys.stderr))

    def note(self, text: str) -> None:
        """Information for people: stdout normally, stderr under --json."""
        print(text, file=self.err if self.json_mode else self.out, flush=True)

    def result(self, doc: Any) -> None:
        print(json.dumps(doc, default=str), file=self.out, flush=True)


class _Progress:
    """Shows a run's progress: a live ``\\r`` line on a terminal, else a line per change."""

    def __init__(self, output: _Output, started: float) -> None:
        self.started = started
        self.stream = output.err if output.json_mode else output.out
        self.live = self.stream.isatty()
        self.quiet = output.json_mode and not self.live
        self._last = ""
        self._dirty = False

    def update(self, state: ExperimentState | None) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        if self.live:
            import shutil

            # Cut to the terminal's width: a wrapped line cannot be redrawn with \r.
            width = max(shutil.get_terminal_size().columns - 1, 20)
            self.stream.write("\r" + progress_line(state, elapsed)[:width] + "\x1b[K")
            self.stream.flush()
            self._dirty = True
            return
        line = progress_line(state, None)
        if line != self._last:
            print(f"[{format_seconds(elapsed):>7}] {line}", file=self.stream, flush=True)
            self._last = line

    def end_line(self) -> None:
        if self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False


# ---------------------------------------------------------------- create


@dataclass
class _CreateRun:
    """What ``create`` has done so far, for an honest message when interrupted."""

    experiment_id: str
    published: bool = False
    progress: _Progress | None = None
    resume_from: str | None = None  # set by ``resume``: the status it resumes from


def _print_config_error(config_path: str, exc: Exception, output: _Output) -> None:
    problems = getattr(exc, "errors", None) or [("<root>", str(exc))]
    for field_path, reason in problems:
        print(f"error: {config_path}: {field_path}: {reason}", file=output.err)


def cmd_create(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus create``: validate, upload the code, publish the start; optionally wait."""
    import asyncio

    from shared.config import load_experiment_config
    from shared.errors import ConfigError

    try:
        config = load_experiment_config(args.config)
        # Only now: the algorithms import numpy and scipy (a second on a busy machine).
        from services.tuner.checks import builtin_algorithm_problems

        problems = builtin_algorithm_problems(config.tuner, config.assessor, config.search_space)
        if problems:
            raise ConfigError(problems, source=args.config)
    except ConfigError as exc:
        _print_config_error(args.config, exc, output)
        return EXIT_USAGE
    if args.dry_run:
        print(json.dumps(redact_secrets(config.normalized()), indent=2), file=output.out)
        return EXIT_OK
    experiment_id = _check_id(args.id) if args.id else new_experiment_id()
    from shared.settings import CommonSettings

    settings = CommonSettings()
    archive = _build_archive(config, Path(args.config), _known_secrets(config, settings))
    run = _CreateRun(experiment_id)
    try:
        return asyncio.run(_create(settings, config, archive, run, args, output))
    except KeyboardInterrupt:
        if run.progress is not None:
            run.progress.end_line()
        if run.published:
            print(f"interrupted: experiment {experiment_id} keeps running; "
                  f"stop it with: tunebus stop {experiment_id}", file=output.err)
        else:
            print(f"interrupted: experiment {experiment_id} may not have been created; "
                  f"check with: tunebus experiment show {experiment_id}", file=output.err)
        return EXIT_INTERRUPTED


def _known_secrets(config: Any, settings: CommonSettings) -> dict[str, str]:
    """The secrets this create knows, by name: none of their values may be uploaded as code."""
    found = settings.known_secrets()
    key = config.secrets().shared_storage_account_key
    if key is not None:
        found["sharedStorage.storageAccountKey"] = key.get_secret_value()
    return found


def _build_archive(config: Any, config_path: Path, secrets: dict[str, str]) -> bytes:
    """The code archive: never the config file itself, no secret's value, within the platform's limits."""
    from tunebus.code_archive import (
        AML_RUNTIME_FILES,
        AML_SNAPSHOT_MAX_BYTES,
        AML_SNAPSHOT_MAX_FILES,
        MAX_ARCHIVE_BYTES,
        CodeArchiveError,
        build_code_archive,
    )

    limits: dict[str, int] = {}
    if config.training_service.platform == "aml":
        # tunebus adds its own few files (the nni shim, the run script) to every AML snapshot.
        limits = {"max_files": AML_SNAPSHOT_MAX_FILES - AML_RUNTIME_FILES,
                  "max_bytes": min(MAX_ARCHIVE_BYTES, AML_SNAPSHOT_MAX_BYTES)}
    try:
        return build_code_archive(Path(config.trial_code_directory), exclude=[config_path],
                                  secrets=secrets, **limits)
    except (CodeArchiveError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


async def _create(settings: CommonSettings, config: Any, archive: bytes, run: _CreateRun,
                  args: argparse.Namespace, output: _Output) -> int:
    import asyncio

    from shared.messages import ExperimentStart

    storage = _Storage(settings)
    watcher = _EventWatcher(run.experiment_id) if args.wait else None
    bus: Bus | None = None
    try:
        # Connect to everything first (in parallel): nothing is uploaded if the broker is down.
        started = [storage.open(), _connect_bus(settings)]
        if watcher is not None:
            started.append(watcher.start(settings.amqp_url))
        results = await asyncio.gather(*started, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            if all(isinstance(f, CliError) for f in failures):
                raise CliError("\n".join(dict.fromkeys(str(f) for f in failures)))
            raise failures[0]
        bus = results[1]  # type: ignore[assignment]
        code_blob = Layout(run.experiment_id).code_archive
        try:
            if args.id and await storage.exists(run.experiment_id):
                raise CliError(f"experiment {run.experiment_id} already exists; choose another --id",
                               EXIT_USAGE)
            await storage.upload(code_blob, archive, "application/gzip")
            secrets = config.secrets()
            if not secrets.empty:
                # The key never goes in the message: services read it from here (create-only,
                # so that no create replaces a running experiment's key).
                await storage.upload(Layout(run.experiment_id).secrets_doc,
                                     json.dumps(secrets.to_document()).encode(), "application/json",
                                     create_only=True)
        except CliError:
            raise
        except Exception as exc:
            if getattr(exc, "code", None) == "BlobAlreadyExists":
                raise CliError(f"experiment {run.experiment_id} already exists; choose another --id",
                               EXIT_USAGE) from None
            raise storage.failure(exc) from None
        assert bus is not None
        await bus.publish(ExperimentStart(experiment_id=run.experiment_id, config=config.to_wire(),
                                          code_blob=code_blob))
        run.published = True
        output.note(f"experiment {run.experiment_id} created")
        if watcher is None:
            if output.json_mode:
                output.result(pending_summary(run.experiment_id))
            return EXIT_OK
        return await _follow(storage, watcher, run, output)
    finally:
        await _close_quietly(watcher, bus, storage)


async def _close_quietly(*things: Any) -> None:
    import asyncio

    for thing in things:
        if thing is None:
            continue
        try:
            await asyncio.wait_for(thing.close(), 5.0)
        except (Exception, asyncio.CancelledError):  # closing must not hide the real outcome
            pass


async def _follow(storage: _Storage, watcher: _EventWatcher, run: _CreateRun, output: _Output, *,
                  resumed_before: datetime | None = None) -> int:
    """Show progress until the experiment ends; re-read state.json on each event (or each second).

    After a resume, an ended status counts only once the state shows a resume later than
    ``resumed_before`` (the dispatcher may not have applied it at the first read)."""
    started = time.monotonic()
    progress = run.progress = _Progress(output, started)
    while True:
        watcher.clear()  # before reading: an event during the read triggers another read
        last_read = time.monotonic()
        try:
            state = await storage.read_state(run.experiment_id)
        except Exception as exc:
            raise storage.failure(exc) from None
        progress.update(state)
        resumed = run.resume_from is None or (state is not None and state.resumed_at is not None
                                              and state.resumed_at != resumed_before)
        if state is not None and state.status.value in _ENDED and resumed:
            break
        await watcher.wait(_POLL_SECONDS, last_read)
    progress.end_line()
    elapsed = time.monotonic() - started
    if output.json_mode:
        output.result(experiment_summary(state))
    else:
        print(summary_text(state, elapsed), file=output.out, flush=True)
    return EXIT_FAILURE if state.status.value == "ERROR" else EXIT_OK


# ---------------------------------------------------------------- reading commands


def _run_with_storage(body: Any) -> Any:
    """Run ``body(storage)`` with storage opened and closed, mapping SDK errors to one line."""
    import asyncio

    from shared.settings import CommonSettings

    async def go() -> Any:
        storage = _Storage(CommonSettings())
        try:
            await storage.open()
            try:
                return await body(storage)
            except CliError:
                raise
            except Exception as exc:
                raise storage.failure(exc) from None
        finally:
            await _close_quietly(storage)

    return asyncio.run(go())


async def _state_or_unknown(storage: _Storage, experiment_id: str) -> ExperimentState | None:
    """The state; None if the experiment exists but has not started; CliError(2) if unknown."""
    state = await storage.read_state(experiment_id)
    if state is None and not await storage.exists(experiment_id):
        raise CliError(f"no experiment {experiment_id} in container "
                       f"{storage.container_name!r} at {storage.endpoint}", EXIT_USAGE)
    return state


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _utc(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


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

    async def body(storage: _Storage) -> tuple[ExperimentState | None, dict[str, Any] | None]:
        state = await _state_or_unknown(storage, experiment_id)
        return state, await storage.read_experiment_doc(experiment_id)

    state, doc = _run_with_storage(body)
    if args.json:
        output.result(experiment_summary(state) if state else pending_summary(experiment_id))
        return EXIT_OK
    print("\n".join(_show_lines(experiment_id, state, (doc or {}).get("config") or {})), file=output.out)
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
    """``tunebus trial ls ID``: a table of the experiment's trials in sequence order."""
    experiment_id = _check_id(args.id)
    state = _run_with_storage(lambda storage: _state_or_unknown(storage, experiment_id))
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


class _Command:
    """What the commands that publish one message share: storage opened first (the state is
    read and checked before anything is published), the broker reached when publishing, both
    closed at the end whatever happens."""

    def __init__(self, settings: CommonSettings, experiment_id: str) -> None:
        self.settings = settings
        self.experiment_id = experiment_id
        self.storage = _Storage(settings)
        self.bus: Bus | None = None

    async def __aenter__(self) -> _Command:
        await self.storage.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _close_quietly(self.bus, self.storage)

    async def state(self) -> ExperimentState | None:
        """The experiment's state (None: created, not started); CliError(2) if it is unknown."""
        try:
            return await _state_or_unknown(self.storage, self.experiment_id)
        except CliError:
            raise
        except Exception as exc:
            raise self.storage.failure(exc) from None

    async def publish(self, msg: Message, *, watcher: _EventWatcher | None = None) -> None:
        """Connect (and start ``watcher`` alongside, so that no event is missed) and publish."""
        import asyncio

        if watcher is not None:
            bus, _ = await asyncio.gather(_connect_bus(self.settings), watcher.start(self.settings.amqp_url))
        else:
            bus = await _connect_bus(self.settings)
        self.bus = bus
        await bus.publish(msg)


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
        state = await _state_or_unknown(storage, experiment_id)
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


def cmd_trial_kill(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus trial kill ID TRIAL``: cancel one running trial (USER_CANCELED)."""
    import asyncio

    experiment_id = _check_id(args.id)
    from shared.settings import CommonSettings

    settings = CommonSettings()

    async def go() -> int:
        from shared.messages import TrialStatus, TrialStopRequested

        async with _Command(settings, experiment_id) as command:
            trial = _find_trial(await command.state(), experiment_id, args.trial)
            if trial.ended:
                print(f"trial {trial.trial_id} already ended ({trial.status.value}); nothing to kill",
                      file=output.out)
                return EXIT_OK
            await command.publish(TrialStopRequested(experiment_id=experiment_id, trial_id=trial.trial_id,
                                                     reason="killed by user",
                                                     status=TrialStatus.USER_CANCELED))
        print(f"kill requested for trial {trial.trial_id}; follow with: tunebus trial ls {experiment_id}",
              file=output.out)
        return EXIT_OK

    return asyncio.run(go())


def cmd_update(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus update ID --concurrency N ...``: publish ``experiment.update`` (``nnictl update``)."""
    import asyncio

    experiment_id = _check_id(args.id)
    from shared import limits
    from shared.config import parse_duration
    from shared.messages import ExperimentUpdate
    from shared.settings import CommonSettings

    if args.concurrency is None and args.max_trial_number is None and args.max_experiment_duration is None:
        raise CliError("give at least one of --concurrency, --max-trial-number, --max-experiment-duration",
                       EXIT_USAGE)
    for flag, value, cap in (("--concurrency", args.concurrency, limits.MAX_TRIAL_CONCURRENCY),
                             ("--max-trial-number", args.max_trial_number, limits.MAX_TRIAL_NUMBER)):
        if value is not None and not 1 <= value <= cap:
            shown = str(value) if len(str(value)) <= 30 else str(value)[:27] + "..."
            raise CliError(f"{flag}: must be between 1 and {cap}, got {shown}", EXIT_USAGE)
    try:
        duration = (None if args.max_experiment_duration is None
                    else parse_duration(args.max_experiment_duration))
    except ValueError as exc:
        raise CliError(f"--max-experiment-duration: {exc}", EXIT_USAGE) from None
    update = ExperimentUpdate(experiment_id=experiment_id, trial_concurrency=args.concurrency,
                              max_trial_number=args.max_trial_number, max_experiment_duration=duration)
    settings = CommonSettings()

    async def go() -> int:
        async with _Command(settings, experiment_id) as command:
            state = await command.state()
            if state is not None and state.status.value == "STOPPING":
                raise CliError(f"experiment {experiment_id} is STOPPING; update it once it is STOPPED",
                               EXIT_USAGE)
            await command.publish(update)
        changes = ", ".join(f"{name} {value:g}" for name, value in update.limits().items())
        when = ("when it is resumed (tunebus resume)" if state is not None and state.finished
                else "now")
        print(f"update requested for experiment {experiment_id}: {changes}; it takes effect {when}",
              file=output.out)
        return EXIT_OK

    return asyncio.run(go())


def cmd_stop(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus stop ID``: publish ``experiment.stop`` (running trials are cancelled)."""
    import asyncio

    experiment_id = _check_id(args.id)
    from shared.settings import CommonSettings

    settings = CommonSettings()

    async def go() -> int:
        from shared.messages import ExperimentStop

        async with _Command(settings, experiment_id) as command:
            state = await command.state()
            if state is not None and state.status.value in _ENDED:
                print(f"experiment {experiment_id} already ended ({state.status.value}); nothing to stop",
                      file=output.out)
                return EXIT_OK
            await command.publish(ExperimentStop(experiment_id=experiment_id))
        print(f"stop requested for experiment {experiment_id}; "
              f"follow with: tunebus experiment show {experiment_id}", file=output.out)
        return EXIT_OK

    return asyncio.run(go())


def cmd_resume(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus resume ID``: publish ``experiment.resume`` for an ended experiment."""
    import asyncio

    experiment_id = _check_id(args.id)
    from shared.settings import CommonSettings

    settings = CommonSettings()
    run = _CreateRun(experiment_id)

    async def go() -> int:
        from shared.messages import ExperimentResume

        watcher = _EventWatcher(experiment_id) if args.wait else None
        try:
            async with _Command(settings, experiment_id) as command:
                state = await command.state()
                if state is None:
                    raise CliError(f"experiment {experiment_id} has not started yet; nothing to resume",
                                   EXIT_USAGE)
                status = state.status.value
                if status == "ERROR" and await command.storage.read_experiment_doc(experiment_id) is None:
                    raise CliError(f"experiment {experiment_id} never started: {state.reason}; fix the "
                                   "config and create it again", EXIT_USAGE)
                if status == "STOPPING":
                    raise CliError(f"experiment {experiment_id} is STOPPING (its running trials are being "
                                   "cancelled); resume it once it is STOPPED", EXIT_USAGE)
                if status not in _RESUMABLE:
                    output.note(f"experiment {experiment_id} is {status}; nothing to resume")
                    if output.json_mode:
                        output.result(experiment_summary(state))
                    return EXIT_OK
                run.resume_from = status
                await command.publish(ExperimentResume(experiment_id=experiment_id), watcher=watcher)
                run.published = True
                output.note(f"resume requested for experiment {experiment_id} (was {status})")
                if status == "DONE":
                    output.note("if its maxTrialNumber or maxExperimentDuration is used up, it ends DONE "
                                f"again at once: raise them first with tunebus update {experiment_id}")
                if watcher is None:
                    if output.json_mode:
                        output.result(experiment_summary(state))
                    else:
                        output.note(f"follow with: tunebus experiment show {experiment_id}")
                    return EXIT_OK
                return await _follow(command.storage, watcher, run, output, resumed_before=state.resumed_at)
        finally:
            await _close_quietly(watcher)

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        if run.progress is not None:
            run.progress.end_line()
        if run.published:
            print(f"interrupted: experiment {experiment_id} keeps running; "
                  f"stop it with: tunebus stop {experiment_id}", file=output.err)
            return EXIT_INTERRUPTED
        raise


# ---------------------------------------------------------------- parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tunebus`` command."""
    parser = argparse.ArgumentParser(
        prog="tunebus",
        description="NNI-compatible hyperparameter tuning on Azure ML, over RabbitMQ.",
        epilog="Settings: TUNEBUS_AMQP_URL, TUNEBUS_STORAGE_CONNECTION_STRING, TUNEBUS_STORAGE_CONTAINER.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log what the clients do (debugging)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser("create", help="validate an NNI v2 config and start an experiment")
    create.add_argument("--config", "-c", required=True, metavar="FILE", help="NNI v2 experiment file (YAML)")
    create.add_argument("--wait", "-w", action="store_true", help="follow the experiment until it ends")
    create.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    create.add_argument("--dry-run", action="store_true", help="validate and print the normalized config")
    create.add_argument("--id", help="experiment id to use (default: 8 random characters)")
    create.set_defaults(handler=cmd_create)

    experiment = commands.add_parser("experiment", help="list or show experiments")
    exp_commands = experiment.add_subparsers(dest="experiment_command", required=True, metavar="COMMAND")
    listing = exp_commands.add_parser("list", aliases=["ls"], help="list experiments")
    listing.add_argument("--json", action="store_true", help="print a JSON array of summaries")
    listing.set_defaults(handler=cmd_experiment_list)
    show = exp_commands.add_parser("show", help="show one experiment")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    show.set_defaults(handler=cmd_experiment_show)

    trial = commands.add_parser("trial", help="list an experiment's trials, read their logs, kill one")
    trial_commands = trial.add_subparsers(dest="trial_command", required=True, metavar="COMMAND")
    trial_ls = trial_commands.add_parser("ls", aliases=["list"], help="list the trials of an experiment")
    trial_ls.add_argument("id", metavar="ID")
    trial_ls.add_argument("--json", action="store_true", help="print a JSON array of trials")
    trial_ls.set_defaults(handler=cmd_trial_ls)
    trial_log = trial_commands.add_parser("log", help="print a local trial's stdout (or stderr)")
    trial_log.add_argument("id", metavar="ID")
    trial_log.add_argument("trial", metavar="TRIAL", help="the trial's id (see: tunebus trial ls ID)")
    trial_log.add_argument("--stderr", action="store_true", help="its stderr instead of its stdout")
    trial_log.add_argument("--attempt", type=int, help="an earlier attempt of a trial that was run again")
    trial_log.set_defaults(handler=cmd_trial_log)
    trial_kill = trial_commands.add_parser("kill", help="cancel one running trial (USER_CANCELED)")
    trial_kill.add_argument("id", metavar="ID")
    trial_kill.add_argument("trial", metavar="TRIAL", help="the trial's id (see: tunebus trial ls ID)")
    trial_kill.set_defaults(handler=cmd_trial_kill)

    stop = commands.add_parser("stop", help="stop an experiment (running trials are cancelled)")
    stop.add_argument("id", metavar="ID")
    stop.set_defaults(handler=cmd_stop)

    update = commands.add_parser("update", help="change an experiment's limits (as nnictl update)")
    update.add_argument("id", metavar="ID")
    update.add_argument("--concurrency", type=int, metavar="N", help="trialConcurrency")
    update.add_argument("--max-trial-number", type=int, metavar="N", help="maxTrialNumber")
    update.add_argument("--max-experiment-duration", metavar="DURATION",
                        help="maxExperimentDuration: seconds, or 30m, 2h, 0.5d")
    update.set_defaults(handler=cmd_update)

    resume = commands.add_parser("resume", help="resume an ended experiment (as nnictl resume)")
    resume.add_argument("id", metavar="ID")
    resume.add_argument("--wait", "-w", action="store_true", help="follow the experiment until it ends")
    resume.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    resume.set_defaults(handler=cmd_resume)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    # The AMQP and Azure clients log every retry and transport error; the CLI reports failures
    # itself, in one line. --verbose shows everything.
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        install_log_masking()
        return
    for name in ("aio_pika", "aiormq", "azure", "shared.bus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    """Run the ``tunebus`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    output = _Output(json_mode=bool(getattr(args, "json", False)))
    try:
        code: int = args.handler(args, output)
        return code
    except CliError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=output.err)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=output.err)
        return EXIT_INTERRUPTED


def entry() -> None:
    """The ``tunebus`` console script: :func:`main`, then exit at once.

    Every connection is closed by then and the output flushed; what is skipped is the
    interpreter's teardown of the SDK modules, which costs about half a second per command.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
