"""Exception types shared by tunebus's packages."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An experiment config is invalid.

    ``errors`` lists every problem found as ``(field_path, reason)``; the field path uses the
    user's own spelling of the keys where it can (``trainingService.subscription_id``), and
    ``<root>`` for the document as a whole. The message lists each problem as ``field: reason``.
    """

    def __init__(self, errors: Iterable[tuple[str, str]], source: str | None = None) -> None:
        self.errors: list[tuple[str, str]] = list(errors)
        self.source = source
        where = f" {source}" if source else ""
        lines = "\n".join(f"  {field}: {reason}" for field, reason in self.errors)
        super().__init__(f"invalid experiment config{where}:\n{lines}")
