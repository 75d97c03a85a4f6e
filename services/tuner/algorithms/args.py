"""Validation of tuners' classArgs: each check names the tuner and the argument it rejects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared import limits

from .errors import TunerConfigError

__all__ = ["ClassArgs"]


class ClassArgs:
    """Reads typed values out of a classArgs mapping and rejects unknown keys."""

    def __init__(self, tuner: str, args: Mapping[str, Any] | None, prefix: str = "") -> None:
        if args is not None and not isinstance(args, Mapping):
            raise TunerConfigError(tuner, f"classArgs{'.' + prefix if prefix else ''} must be an object")
        self.tuner = tuner
        self.args = dict(args or {})
        self.prefix = prefix
        self._read: set[str] = set()

    def _error(self, key: str, reason: str) -> TunerConfigError:
        return TunerConfigError(self.tuner, reason, f"{self.prefix}{key}")

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self.args.get(key)

    def optimize_mode(self, default: str = "maximize") -> bool:
        """NNI's optimize_mode; returns True when minimizing."""
        value = self._get("optimize_mode")
        if value is None:
            value = default
        if value not in ("maximize", "minimize"):
            raise self._error("optimize_mode", f"must be 'maximize' or 'minimize', got {value!r}")
        return value == "minimize"

    def integer(
        self, key: str, default: int | None, low: int | None = None, high: int = limits.MAX_CLASS_ARG_INT
    ) -> int | None:
        """An optional integer argument in [low, high] (by default: anything fitting 64 bits)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._error(key, f"must be an integer, got {_short(value)}")
        if low is not None and value < low:
            raise self._error(key, f"must be >= {low}, got {_short(value)}")
        if value > high:
            raise self._error(key, f"must be <= {high}, got {_short(value)}")
        return value

    def number(
        self, key: str, default: float | None, low: float, high: float = limits.MAX_CLASS_ARG_NUMBER
    ) -> float | None:
        """An optional number in [low, high]."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(key, f"must be a number, got {_short(value)}")
        if not abs(value) <= limits.MAX_CLASS_ARG_NUMBER:  # inf, nan, 10**400 (isfinite would overflow)
            raise self._error(key, f"must be a finite number, got {_short(value)}")
        if not low <= value <= high:
            raise self._error(key, f"must be between {low:g} and {high:g}, got {_short(value)}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """An optional boolean (true/false in YAML, not 0/1 or a string)."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._error(key, f"must be true or false, got {_short(value)}")
        return value

    def text(self, key: str, max_chars: int) -> str | None:
        """An optional non-blank string of at most ``max_chars`` characters (no NUL)."""
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or "\x00" in value or len(value) > max_chars:
            raise self._error(key, f"must be a non-blank string of at most {max_chars} characters, "
                                   f"got {_short(value)}")
        return value

    def one_of(self, key: str, default: Any, options: Iterable[Any]) -> Any:
        """An optional argument from a fixed set of options."""
        if key not in self.args:
            self._read.add(key)
            return default
        value = self._get(key)
        options = list(options)
        if value not in options:
            raise self._error(key, f"must be one of {options}, got {value!r}")
        return value

    def section(self, key: str) -> ClassArgs:
        """A nested object of arguments (e.g. TPE's ``tpe_args``)."""
        value = self._get(key)
        if value is not None and not isinstance(value, Mapping):
            raise self._error(key, f"must be an object, got {type(value).__name__}")
        return ClassArgs(self.tuner, value, f"{self.prefix}{key}.")

    def reject_unknown(self) -> None:
        """Raise for any key that was never read: a typo must not pass silently."""
        unknown = sorted(set(self.args) - self._read)
        if unknown:
            raise self._error(unknown[0], f"is not a known argument (known: {', '.join(sorted(self._read))})")


def _short(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a 400-digit integer helps nobody)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
