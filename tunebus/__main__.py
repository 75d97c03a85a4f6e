"""``python -m tunebus``: the ``tunebus`` command."""

from tunebus.cli import main

raise SystemExit(main())
