"""The process a custom tuner or assessor runs in: ``python -m services.tuner.worker``.

One worker per experiment with a ``className`` tuner and/or assessor. The tuner service
(:mod:`services.tuner.custom_process`) starts it in the experiment's own folder, with a
minimal environment (no service credential) and an address-space limit, and talks to it over
its stdin and stdout, one JSON object per line:

* ``{"op": "load", "code_directories": [...], "algorithms": {"tuner": {"className", "classArgs",
  "searchSpace"}, "assessor": {...}}}`` imports and builds the algorithms, as NNI does: each
  code directory is put first on ``sys.path`` and stays there; ``nni`` is tunebus's
  algorithm API (:mod:`tunebus.algorithm_runtime`) unless a real NNI is installed;
* ``{"op": "call", "role": "tuner", "method": "generate_parameters", "args": [7]}`` calls one
  method of NNI's tuner or assessor interface.

Every request gets one reply: ``{"ok": result}`` or ``{"error": {"kind", "message",
"traceback"}}`` where kind is ``config`` (the config must change: no such class, classArgs that
do not fit), ``no_more_trials`` (``nni.NoMoreTrialError``) or ``error`` (the user's code raised;
``traceback`` is the tail of its traceback). The user's ``print`` goes to stderr, never into
the replies. Stdlib only: the worker must start fast and hold little memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["ConfigProblem", "NoMoreTrials", "call", "handle", "load", "main", "traceback_tail"]

#: How much of a traceback's end a reply keeps.
TRACEBACK_TAIL_CHARS = 2000

TUNER_REQUIRED = ("update_search_space", "generate_parameters", "receive_trial_result")
ASSESSOR_REQUIRED = ("assess_trial",)
METHODS = {
    "tuner": ("update_search_space", "generate_parameters", "generate_multiple_parameters",
              "receive_trial_result", "trial_end", "import_data", "load_checkpoint", "save_checkpoint"),
    "assessor": ("assess_trial", "trial_end", "load_checkpoint", "save_checkpoint"),
}


class ConfigProblem(Exception):
    """Something the user must fix in the experiment's config (the message says what)."""

    role: str | None = None


class NoMoreTrials(Exception):
    """The tuner raised NNI's ``NoMoreTrialError``."""


# ---------------------------------------------------------------- loading


def _load_class(class_name: str, required: tuple[str, ...]) -> type:
    module_name, _, attribute = class_name.rpartition(".")
    if not module_name or not attribute:
        raise ConfigProblem("className must look like 'module.ClassName'")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigProblem(f"cannot load the class: {exc}") from exc
    missing = [name for name in required if not callable(getattr(cls, name, None))]
    if missing:
        raise ConfigProblem(f"must implement {', '.join(missing)}")
    return cls  # type: ignore[no-any-return]


def _construct(cls: type, class_args: dict[str, Any]) -> Any:
    try:
        return cls(**class_args)
    except TypeError as exc:
        # Only a mismatch of the call itself is the config's fault; a TypeError raised inside
        # the constructor's body is the code's (its traceback has frames below this one).
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            raise ConfigProblem(f"classArgs do not fit the constructor: {exc}") from exc
        raise


def load(request: dict[str, Any]) -> dict[str, Any]:
    """Import and build the algorithms a load request names; the tuner gets its search space."""
    for directory in reversed(request.get("code_directories") or []):
        sys.path.insert(0, directory)
    from tunebus.algorithm_runtime import RUNTIME_DIR

    sys.path.append(RUNTIME_DIR)  # after site-packages: a real NNI, if installed, is used instead
    built: dict[str, Any] = {}
    for role, spec in (request.get("algorithms") or {}).items():
        required = TUNER_REQUIRED if role == "tuner" else ASSESSOR_REQUIRED
        try:
            cls = _load_class(str(spec["className"]), required)
            built[role] = _construct(cls, dict(spec.get("classArgs") or {}))
        except ConfigProblem as exc:
            exc.role = role
            raise
        if role == "tuner" and spec.get("searchSpace") is not None:
            built[role].update_search_space(spec["searchSpace"])
    return built


# ---------------------------------------------------------------- NNI's defaults around the user's object


def _no_more_trials(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoMoreTrialError"


def call(algorithms: dict[str, Any], role: str, method: str, args: list[Any]) -> Any:
    """One call of NNI's interface, with NNI's defaults for the optional methods an object lacks."""
    if method not in METHODS.get(role, ()) or role not in algorithms:
        raise ValueError(f"no {role} method {method!r} to call")
    target = algorithms[role]
    own: Callable[..., Any] | None = getattr(target, method, None)
    if method == "generate_multiple_parameters" and not callable(own):
        return _generate_each(target, args[0])
    if not callable(own):
        return None  # trial_end, import_data, checkpoints: NNI's defaults do nothing
    try:
        result = own(*args)
    except Exception as exc:
        if _no_more_trials(exc):
            raise NoMoreTrials(str(exc)) from exc
        raise
    if method == "assess_trial":
        return _verdict(result)
    if method == "generate_multiple_parameters":
        return list(result)
    return result if method in ("generate_parameters",) else None


def _generate_each(tuner: Any, parameter_ids: list[Any]) -> list[Any]:
    out = []
    for parameter_id in parameter_ids:
        try:
            out.append(tuner.generate_parameters(parameter_id))
        except Exception as exc:
            if _no_more_trials(exc):
                break
            raise
    return out


def _verdict(answer: Any) -> str:
    """NNI's ``AssessResult`` (whichever module it came from) or a bool, as ``Good``/``Bad``."""
    if isinstance(answer, bool):
        return "Good" if answer else "Bad"
    if getattr(answer, "name", None) in ("Good", "Bad") and isinstance(getattr(answer, "value", None), bool):
        return str(answer.name)
    raise TypeError(f"assess_trial must return AssessResult.Good or AssessResult.Bad, got {answer!r}")


# ---------------------------------------------------------------- replies


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays as plain numbers and lists (NNI serialises them the same way)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def traceback_tail(exc: BaseException, limit: int = TRACEBACK_TAIL_CHARS) -> str:
    """The user's frames of ``exc``'s traceback and the error (this module's frames left out)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if os.path.abspath(frame.filename) != os.path.abspath(__file__)]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    text = "".join([*lines, *traceback.format_exception_only(exc)]).rstrip()
    if len(text) > limit:
        text = "..." + text[-limit:].split("\n", 1)[-1]
    return text


def _error(kind: str, exc: BaseException) -> dict[str, Any]:
    return {"error": {"kind": kind, "message": str(exc), "traceback": traceback_tail(exc),
                      "role": getattr(exc, "role", None)}}


def handle(algorithms: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request (a load fills ``algorithms``)."""
    try:
        if request.get("op") == "load":
            algorithms.update(load(request))
            return {"ok": None}
        return {"ok": call(algorithms, str(request.get("role")), str(request.get("method")),
                           list(request.get("args") or []))}
    except ConfigProblem as exc:
        return _error("config", exc)
    except NoMoreTrials as exc:
        return _error("no_more_trials", exc)
    except Exception as exc:  # MemoryError included: the user's code failed
        return _error("error", exc)


def _reply(out: TextIO, reply: dict[str, Any]) -> None:
    try:
        line = json.dumps(reply, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as exc:
        line = json.dumps(_error("error", ValueError(f"the result cannot be sent as JSON: {exc}")))
    out.write(line + "\n")
    out.flush()


# ---------------------------------------------------------------- main


def _private_channel() -> tuple[TextIO, TextIO]:
    """The protocol's own copies of stdin and stdout; the user's code gets /dev/null and stderr."""
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return requests, replies


def _limit_memory(limit_bytes: int) -> None:
    if limit_bytes > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the tuner service's thread that started this worker ends (Linux): a worker
    stuck in the user's code must not outlive a tuner that was killed."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:  # it ended before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.tuner.worker")
    parser.add_argument("--memory-limit", type=int, default=0, help="address-space limit in bytes (0: none)")
    parser.add_argument("--parent", type=int, default=0, help="the tuner service's pid")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    requests, replies = _private_channel()
    _limit_memory(args.memory_limit)
    algorithms: dict[str, Any] = {}
    for line in requests:
        try:
            request = json.loads(line)
        except ValueError as exc:
            _reply(replies, _error("error", ValueError(f"not a JSON request: {exc}")))
            continue
        _reply(replies, handle(algorithms, request if isinstance(request, dict) else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
