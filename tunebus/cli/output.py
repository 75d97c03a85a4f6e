"""Where commands write: masked streams, the progress line, tables."""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, cast

from shared.secrets_mask import mask_secrets

from .common import format_seconds, progress_line

if TYPE_CHECKING:
    from shared.state import ExperimentState


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


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _utc(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")
