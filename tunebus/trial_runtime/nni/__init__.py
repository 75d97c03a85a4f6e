"""tunebus's stand-in for NNI's trial API: ``import nni`` in unchanged NNI trial code.

Details: :class:`TrialRuntime`.
"""

from __future__ import annotations

import os
import sys

# typing costs more to import than all of this module; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = [
    "MetricReportError",
    "TrialRuntime",
    "get_current_parameter",
    "get_experiment_id",
    "get_next_parameter",
    "get_next_parameters",
    "get_sequence_id",
    "get_trial_id",
    "report_final_result",
    "report_intermediate_result",
]

# Lets tunebus.trial recognise this module when it is importable as ``nni``.
__tunebus_shim__ = True

STANDALONE = "STANDALONE"
_STANDALONE_WARNING = (
    "Running NNI code without runtime (no tunebus environment): get_next_parameter() returns {} "
    "and results are only logged. Submit the trial with `tunebus create` to tune it."
)


class MetricReportError(RuntimeError):
    """A metric could not be written to blob storage (names the blob and the HTTP status)."""


def _checked_number(value: Any, what: str) -> int | float:
    """``value`` as a plain int/float, or TypeError/ValueError saying what is wrong."""
    if type(value) is int:
        try:
            float(value)  # the tuner optimises floats: 10**400 has no value there
        except OverflowError:
            raise ValueError(f"{what} is an int too large for a float ({value.bit_length()} bits)") from None
        return value
    if type(value) is float and value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
        return value
    import math
    import numbers

    if not isinstance(value, numbers.Number) and callable(getattr(value, "item", None)):
        value = value.item()  # numpy 0-d arrays, torch scalar tensors
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}: {value!r:.80}")
    plain: int | float = int(value) if isinstance(value, numbers.Integral) else float(value)
    if type(plain) is int:
        return _checked_number(plain, what)
    if isinstance(plain, float) and not math.isfinite(plain):
        raise ValueError(f"{what} must be a finite number, got {plain}")
    return plain


def _json_default(value: Any) -> Any:
    """Make numpy/torch scalars and other number-likes JSON-able in dict metrics."""
    if callable(getattr(value, "item", None)):
        return value.item()
    if callable(getattr(value, "tolist", None)):
        return value.tolist()
    if callable(getattr(value, "__float__", None)):
        return float(value)
    raise TypeError(f"metric value of type {type(value).__name__} is not JSON serializable")


def check_metric(metric: Any) -> Any:
    """The metric as it will be written: a plain number, or a JSON-able dict with a numeric 'default'.

    Raises TypeError for a wrong type and ValueError for a dict without ``'default'`` or a
    non-finite number, naming the problem.
    """
    if isinstance(metric, dict):
        if "default" not in metric:
            keys = ", ".join(repr(k) for k in list(metric)[:10])
            raise ValueError(f"a dict metric needs a 'default' key holding a number; got keys [{keys}]")
        import json

        default = _checked_number(metric["default"], "metric['default']")
        # A JSON round trip turns numpy scalars into plain numbers and rejects the unserializable.
        doc = json.loads(json.dumps(dict(metric), default=_json_default, allow_nan=True))
        doc["default"] = default
        return doc
    return _checked_number(metric, "metric")


def _parse_json(text: str) -> Any:
    """``json.loads(text)`` without importing ``json``: its package pulls in ``re`` and ``enum``
    (a fifth of a no-op trial's life). CPython's C scanner does the work; elsewhere
    (or on an error, for json's own message) this is ``json.loads``."""
    try:
        import _json

        scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]  # reads the attributes only
    except (ImportError, AttributeError, TypeError):
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = scan(text, start)
    except (StopIteration, ValueError):
        value, end = None, -1
    if end < 0 or text[end:].strip(" \t\n\r"):
        import json

        return json.loads(text)  # raises json.JSONDecodeError naming the position
    return value


class _ScannerContext:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``: the default settings."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def _metric_document(sequence: int, kind: str, value: Any, time: str) -> bytes:
    """One results record: a JSON object on one line, newline included. A plain number (the
    usual metric) is written without ``json``; ``repr`` of a finite float and ``str`` of an int
    are JSON numbers. ``json.dumps`` escapes newlines inside strings, so a record is one line."""
    if type(value) is float or type(value) is int:
        return f'{{"sequence":{sequence},"kind":"{kind}","value":{value!r},"time":"{time}"}}\n'.encode()
    import json

    return json.dumps({"sequence": sequence, "kind": kind, "value": value, "time": time},
                      separators=(",", ":")).encode() + b"\n"


def _utc_now_iso() -> str:
    import time

    # time, not datetime: one module less to import in every trial.
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class TrialRuntime:
    """One trial's view of tunebus: its identity, parameters and metric writer.

    The module-level functions use one instance built from ``os.environ`` on first use;
    tests build their own with an explicit ``environ``.

    Stdlib only, runs on Python 3.8+ (trial images are not tunebus's) and nearly free to import:
    JSON, HTTP and logging are imported on first use, so a trial's start-up pays for nothing it
    does not call. That is why this package parses JSON with CPython's C scanner (:func:`_parse_json`),
    writes plain-http appends on a raw socket (:mod:`._blob`) and reads the clock with ``time``:
    each avoids an import that would be a sizeable part of a short trial's life. The measurements
    are in benchmarks/README_startup.md; these three are the only such tricks, all in this package.

    Two modes, chosen from the environment when first needed:

    * **tunebus** (``TUNEBUS_METRICS_URL`` or ``NNI_PLATFORM`` set, as the submitter does): the
      parameters come from ``TUNEBUS_PARAMETERS`` and every report is appended as one line (a JSON
      record with its sequence number) to the attempt's results blob, whose URL with an
      append-only SAS is ``TUNEBUS_METRICS_URL``. A missing variable is an error that names it.
    * **standalone** (none of those set): like NNI without its runtime. ``get_next_parameter()``
      warns and returns ``{}`` (or the JSON in ``TUNEBUS_PARAMETERS`` if set, handy for debugging
      one parameter set), the ids are ``'STANDALONE'`` / ``0`` and reports are logged to stdout.

    A metric is a number, or a dict whose ``'default'`` is a number (the value the tuner
    optimises; the other keys are kept for display). Anything else raises TypeError/ValueError,
    and so does a number no float can hold (NaN, infinities, ints beyond ±1.8e308).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        self._env = env
        self.standalone = not (env.get("TUNEBUS_METRICS_URL") or env.get("NNI_PLATFORM"))
        self.experiment_id = env.get("NNI_EXP_ID") or STANDALONE
        self.trial_id = env.get("NNI_TRIAL_JOB_ID") or STANDALONE
        self.sequence_id = int(env.get("NNI_TRIAL_SEQ_ID") or 0)
        self.output_dir = env.get("NNI_OUTPUT_DIR")
        self.platform = env.get("NNI_PLATFORM")
        self.parameters: dict[str, Any] | None = None
        self._next_sequence = 0  # blob sequence: intermediate and final share it
        self._intermediate_index = 0
        self._final_reported = False
        self._writer: Any = None
        import _thread

        self._lock = _thread.allocate_lock()

    # ------------------------------------------------------------------ parameters

    def _require(self, name: str) -> str:
        value = self._env.get(name)
        if not value:
            raise RuntimeError(f"{name} is not set: the trial was not started by a tunebus submitter")
        return value

    def get_next_parameter(self) -> dict[str, Any]:
        """The trial's parameters (a fresh dict on every call)."""
        raw = self._env.get("TUNEBUS_PARAMETERS")
        if raw is None:
            if not self.standalone:
                self._require("TUNEBUS_PARAMETERS")
            import warnings

            warnings.warn(_STANDALONE_WARNING, RuntimeWarning, stacklevel=3)
            self.parameters = {}
            return {}
        try:
            params = _parse_json(raw)
        except ValueError as exc:
            raise ValueError(f"TUNEBUS_PARAMETERS is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise ValueError(f"TUNEBUS_PARAMETERS must be a JSON object, got {type(params).__name__}")
        self.parameters = params
        return _parse_json(raw)

    def get_current_parameter(self, tag: str | None = None) -> Any:
        """The parameters got by :meth:`get_next_parameter` (one of them with ``tag``); None before."""
        if self.parameters is None:
            return None
        if tag is None:
            return self.parameters
        return self.parameters[tag]

    # ------------------------------------------------------------------ metrics

    def report(self, metric: Any, kind: str) -> None:
        """Validate and record one metric of ``kind`` ('PERIODICAL' or 'FINAL')."""
        value = check_metric(metric)
        with self._lock:
            if kind == "FINAL" and self._final_reported and not self.standalone:
                raise RuntimeError(
                    "report_final_result() was already called: a trial reports one final result"
                )
            if self.standalone:
                self._log(kind, value)
            else:
                self._write(kind, value)
            self._next_sequence += 1
            if kind == "FINAL":
                self._final_reported = True
            else:
                self._intermediate_index += 1

    def _log(self, kind: str, value: Any) -> None:
        import logging

        logger = logging.getLogger("nni")
        if not logger.handlers and not logging.getLogger().handlers:
            # NNI's standalone mode logs to stdout in this format.
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter(
                "[%(asctime)s] %(levelname)s (%(name)s/%(threadName)s) %(message)s", "%Y-%m-%d %H:%M:%S"
            ))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
        if kind == "FINAL":
            logger.info("Final result: %s", value)
        else:
            logger.info("Intermediate result: %s  (Index %s)", value, self._intermediate_index)

    def _write(self, kind: str, value: Any) -> None:
        if self._writer is None:
            from ._blob import ResultsWriter

            self._writer = ResultsWriter(self._require("TUNEBUS_METRICS_URL"))
        body = _metric_document(self._next_sequence, kind, value, _utc_now_iso())
        self._writer.append(body)


_runtime: TrialRuntime | None = None


def _current() -> TrialRuntime:
    global _runtime
    if _runtime is None:
        _runtime = TrialRuntime()
    return _runtime


def get_next_parameter() -> dict[str, Any]:
    """The hyperparameters the tuner chose for this trial, e.g. ``{'lr': 0.01, 'act': 'relu'}``.

    Call it once per trial. Outside tunebus it warns and returns ``{}``, like NNI standalone.
    """
    return _current().get_next_parameter()


def get_next_parameters() -> dict[str, Any]:
    """Alias of :func:`get_next_parameter` (NNI has both)."""
    return _current().get_next_parameter()


def get_current_parameter(tag: str | None = None) -> Any:
    """The parameters :func:`get_next_parameter` returned, or one of them by name; None before."""
    return _current().get_current_parameter(tag)


def report_intermediate_result(metric: Any) -> None:
    """Report an intermediate result (e.g. per-epoch accuracy): a number or a dict with 'default'."""
    _current().report(metric, "PERIODICAL")


def report_final_result(metric: Any) -> None:
    """Report the trial's final result, once: a number or a dict with a numeric 'default'."""
    _current().report(metric, "FINAL")


def get_experiment_id() -> str:
    """The experiment's id (``'STANDALONE'`` outside tunebus)."""
    return _current().experiment_id


def get_trial_id() -> str:
    """This trial's id (``'STANDALONE'`` outside tunebus)."""
    return _current().trial_id


def get_sequence_id() -> int:
    """This trial's sequence number in the experiment (0 outside tunebus)."""
    return _current().sequence_id
