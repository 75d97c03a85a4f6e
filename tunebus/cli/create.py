"""``tunebus create``: validate, pack the code, upload, publish ``experiment.start``, follow."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.layout import Layout
from shared.secrets_mask import redact_secrets
from shared.statuses import FINISHED_EXPERIMENT_STATUSES

from .common import (
    _POLL_SECONDS,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    _check_id,
    _close_quietly,
    experiment_summary,
    new_experiment_id,
    pending_summary,
    summary_text,
)
from .events import _connect_bus, _EventWatcher
from .output import _Output, _Progress
from .storage import _Storage

if TYPE_CHECKING:
    from datetime import datetime

    from shared.bus import Bus
    from shared.settings import CommonSettings


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
        from shared.algorithms import config_problems

        problems = config_problems(config.tuner, config.assessor, config.search_space, config.platform)
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
    secrets = _known_secrets(config, settings)
    archive = _build_archive(config, Path(args.config), secrets)
    algorithm_archives = _build_algorithm_archives(config, Path(args.config), secrets)
    run = _CreateRun(experiment_id)
    try:
        return asyncio.run(_create(settings, config, (archive, algorithm_archives), run, args, output))
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
    from shared.code_archive import (
        AML_RUNTIME_FILES,
        AML_SNAPSHOT_MAX_BYTES,
        AML_SNAPSHOT_MAX_FILES,
        MAX_ARCHIVE_BYTES,
        CodeArchiveError,
        build_code_archive,
    )

    limits: dict[str, Any] = {}
    if config.training_service.platform == "aml":
        # tunebus adds its own few files (the nni shim, the run script) to every AML snapshot.
        limits = {"max_files": AML_SNAPSHOT_MAX_FILES - AML_RUNTIME_FILES,
                  "max_bytes": min(MAX_ARCHIVE_BYTES, AML_SNAPSHOT_MAX_BYTES)}
    try:
        return build_code_archive(Path(config.trial_code_directory), exclude=[config_path],
                                  secrets=secrets, **limits)
    except (CodeArchiveError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _build_algorithm_archives(config: Any, config_path: Path, secrets: dict[str, str]) -> dict[str, bytes]:
    """Each custom tuner's or assessor's codeDirectory, packed like the trial code (ignore files,
    no config file, no secret) within :data:`MAX_ALGORITHM_CODE_BYTES`: it travels with the
    experiment, so that the tuner service runs it wherever it is."""
    from shared.code_archive import MAX_ALGORITHM_CODE_BYTES, CodeArchiveError, build_code_archive

    archives: dict[str, bytes] = {}
    for role in ("tuner", "assessor"):
        spec = getattr(config, role)
        if spec is None or spec.class_name is None:
            continue
        try:
            archives[role] = build_code_archive(
                Path(spec.code_directory), exclude=[config_path], secrets=secrets,
                max_bytes=MAX_ALGORITHM_CODE_BYTES, what=f"{role}.codeDirectory")
        except (CodeArchiveError, OSError) as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    return archives


async def _create(settings: CommonSettings, config: Any, archives: tuple[bytes, dict[str, bytes]],
                  run: _CreateRun, args: argparse.Namespace, output: _Output) -> int:
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
        archive, algorithm_archives = archives
        layout = Layout(run.experiment_id)
        code_blob = layout.code_archive
        algorithm_code = {role: layout.algorithm_code_archive(role) for role in algorithm_archives}
        try:
            if args.id and await storage.exists(run.experiment_id):
                raise CliError(f"experiment {run.experiment_id} already exists; choose another --id",
                               EXIT_USAGE)
            await storage.upload(code_blob, archive, "application/gzip")
            for role, data in algorithm_archives.items():
                await storage.upload(algorithm_code[role], data, "application/gzip")
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
                                          code_blob=code_blob, algorithm_code=algorithm_code))
        run.published = True
        output.note(f"experiment {run.experiment_id} created")
        if watcher is None:
            if output.json_mode:
                output.result(pending_summary(run.experiment_id))
            return EXIT_OK
        return await _follow(storage, watcher, run, output)
    finally:
        await _close_quietly(watcher, bus, storage)


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
        if state is not None and state.status in FINISHED_EXPERIMENT_STATUSES and resumed:
            break
        await watcher.wait(_POLL_SECONDS, last_read)
    progress.end_line()
    elapsed = time.monotonic() - started
    if output.json_mode:
        output.result(experiment_summary(state))
    else:
        print(summary_text(state, elapsed), file=output.out, flush=True)
    return EXIT_FAILURE if state.status.value == "ERROR" else EXIT_OK
