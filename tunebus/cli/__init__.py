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
import logging
import os
import sys

from shared.secrets_mask import install_log_masking

from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    experiment_summary,
    format_seconds,
    new_experiment_id,
    pending_summary,
    progress_line,
    summary_text,
)
from .control import cmd_resume, cmd_stop, cmd_trial_kill, cmd_update
from .create import cmd_create
from .output import _Output
from .reading import cmd_experiment_list, cmd_experiment_show, cmd_trial_log, cmd_trial_ls, trial_row
from .storage import blob_endpoint

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "blob_endpoint",
    "build_parser",
    "entry",
    "experiment_summary",
    "format_seconds",
    "main",
    "new_experiment_id",
    "pending_summary",
    "progress_line",
    "summary_text",
    "trial_row",
]


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
    trial_ls.add_argument("--last", type=int, metavar="N",
                          help="only the running trials and the N that ended last (reads only those)")
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
