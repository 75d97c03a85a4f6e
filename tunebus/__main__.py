"""``python -m tunebus``: the ``tunebus`` command."""

from tunebus.cli import entry

entry()
