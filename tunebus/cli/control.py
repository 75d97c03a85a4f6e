"""The commands that publish one message: ``trial kill``, ``update``, ``stop``, ``resume``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shared.statuses import FINISHED_EXPERIMENT_STATUSES, ExperimentStatus

from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    _check_id,
    _close_quietly,
    experiment_summary,
)
from .create import _CreateRun, _follow
from .events import _connect_bus, _EventWatcher
from .output import _Output
from .reading import _find_trial
from .storage import _state_or_unknown, _Storage

if TYPE_CHECKING:
    from shared.bus import Bus
    from shared.messages import Message
    from shared.settings import CommonSettings
    from shared.state import ExperimentState


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

    async def state(self, *, full: bool = False) -> ExperimentState | None:
        """The experiment's summary (``full``: with every trial; None: created, not started);
        CliError(2) if it is unknown."""
        try:
            return await _state_or_unknown(self.storage, self.experiment_id, full=full)
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


def cmd_trial_kill(args: argparse.Namespace, output: _Output) -> int:
    """``tunebus trial kill ID TRIAL``: cancel one running trial (USER_CANCELED)."""
    import asyncio

    experiment_id = _check_id(args.id)
    from shared.settings import CommonSettings

    settings = CommonSettings()

    async def go() -> int:
        from shared.messages import TrialStatus, TrialStopRequested

        async with _Command(settings, experiment_id) as command:
            trial = _find_trial(await command.state(full=True), experiment_id, args.trial)
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
            if state is not None and state.status in FINISHED_EXPERIMENT_STATUSES:
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
                status = state.status
                never_started = (status == ExperimentStatus.ERROR
                                 and await command.storage.read_experiment_doc(experiment_id) is None)
                if never_started:
                    raise CliError(f"experiment {experiment_id} never started: {state.reason}; fix the "
                                   "config and create it again", EXIT_USAGE)
                if status == ExperimentStatus.STOPPING:
                    raise CliError(f"experiment {experiment_id} is STOPPING (its running trials are being "
                                   "cancelled); resume it once it is STOPPED", EXIT_USAGE)
                if status not in FINISHED_EXPERIMENT_STATUSES:
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
