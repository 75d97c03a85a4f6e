"""Whether an error from Azure ML is worth retrying.

azureml-core raises many exception types (its own, msrest's, requests', azure-core's); what
decides is mostly the HTTP status behind them. Throttling (429), server errors (5xx), request
timeouts (408) and network errors pass: retry with back-off. Authentication failures, a compute
target that does not exist, and other 4xx (validation) never pass: fail the trial with the reason.
A 409 on submit means a run with that id exists already (an earlier attempt got through).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = [
    "is_conflict",
    "is_transient",
    "status_code_of",
]

_TRANSIENT_CODES = frozenset({408, 429})
_PERMANENT_TYPES = (
    "AuthenticationException",
    "ComputeTargetException",
    "UserErrorException",
    "RunConfigurationException",
    "ProjectSystemException",
    "ExperimentExecutionException",
    "PermissionError",
    "FileNotFoundError",
    "ValueError",
    "TypeError",
)
_TRANSIENT_TYPES = (
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "TimeoutError",
    "ServiceRequestError",
    "ServiceResponseError",
    "ChunkedEncodingError",
    "ProtocolError",
    "RemoteDisconnected",
)
_TRANSIENT_WORDS = re.compile(
    r"\b(429|too many requests|throttl\w*|rate limit\w*|temporarily unavailable|service unavailable|"
    r"timed? ?out|connection (?:reset|aborted|refused)|internal server error|bad gateway|"
    r"gateway time-?out|50[0-4])\b",
    re.IGNORECASE,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and what SDK wrappers keep as ``inner_exception``."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        item = todo.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        for following in (item.__cause__, item.__context__, getattr(item, "inner_exception", None)):
            if isinstance(following, BaseException):
                todo.append(following)


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status behind an exception (or its causes), if it carries one."""
    for item in _chain(exc):
        for holder in (item, getattr(item, "response", None), getattr(item, "inner_exception", None)):
            if holder is None:
                continue
            for attr in ("status_code", "status", "http_status_code"):
                value = getattr(holder, attr, None)
                if isinstance(value, int) and 100 <= value <= 599:
                    return value
    return None


def is_conflict(exc: BaseException) -> bool:
    """A 409, or a message saying the run exists already."""
    if status_code_of(exc) == 409:
        return True
    return "already exists" in str(exc).lower()


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call later may succeed (see the module docstring)."""
    code = status_code_of(exc)
    if code is not None:
        return code in _TRANSIENT_CODES or code >= 500
    names = {cls.__name__ for item in _chain(exc) for cls in type(item).__mro__}
    if names & set(_PERMANENT_TYPES):
        return False
    if names & set(_TRANSIENT_TYPES):
        return True
    return bool(_TRANSIENT_WORDS.search(str(exc)))
