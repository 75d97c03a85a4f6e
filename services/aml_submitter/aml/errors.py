"""Whether an error from Azure ML is worth retrying.

azureml-core raises many exception types (its own, msrest's, requests', azure-core's); what
decides is the HTTP status behind them. Throttling (429), server errors (5xx), request
timeouts (408) and network errors pass: retry with back-off. Authentication failures, a compute
target that does not exist, and other 4xx (validation) never pass: fail the trial with the reason.
A 409 on submit means a run with that id exists already (an earlier attempt got through).

Where the status is, in azureml-core 1.61 (read in its source):

- ``ServiceException`` (run history, ``Run.get``): a ``status_code`` attribute;
- ``ExperimentExecutionException`` (``Experiment.submit``, the execution service): **only inside
  its message**, a JSON document ``{"status_code": 429, "url": ..., "error_details": ...}``
  (``get_http_exception_response_string``);
- ``ComputeTargetException`` (``ComputeTarget(ws, name)``): only inside its message,
  ``"Received bad response from Resource Provider:\nResponse Code: 429\n..."``; a missing
  cluster is ``"ComputeTargetNotFound: ..."`` with no status at all (permanent);
- azure-core's ``HttpResponseError`` (SDK v2): ``status_code``.

So an exception type alone decides nothing: a ComputeTargetException may be throttling.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

__all__ = [
    "is_auth_error",
    "is_conflict",
    "is_not_found",
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
_AUTH_TYPES = frozenset({"AuthenticationException", "ClientAuthenticationError",
                         "CredentialUnavailableError"})
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
#: Where azureml-core writes the HTTP status into a message (see the module docstring).
_STATUS_IN_MESSAGE = re.compile(
    r'"status_code"\s*:\s*(\d{3})\b|\bResponse Code:\s*(\d{3})\b|\bstatus code[:= ]\s*(\d{3})\b',
    re.IGNORECASE,
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


def _status_in_message(exc: BaseException) -> int | None:
    """The HTTP status azureml-core wrote into an exception's message, if any."""
    text = str(exc)
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("status_code"), int):
        return int(document["status_code"])
    match = _STATUS_IN_MESSAGE.search(text)
    if match is None:
        return None
    return int(next(group for group in match.groups() if group))


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status behind an exception (or its causes): an attribute, else in the message."""
    chain = list(_chain(exc))
    for item in chain:
        for holder in (item, getattr(item, "response", None), getattr(item, "inner_exception", None)):
            if holder is None:
                continue
            for attr in ("status_code", "status", "http_status_code"):
                value = getattr(holder, attr, None)
                if isinstance(value, int) and 100 <= value <= 599:
                    return value
    for item in chain:
        code = _status_in_message(item)
        if code is not None and 100 <= code <= 599:
            return code
    return None


def is_not_found(exc: BaseException) -> bool:
    """A 404 (or v2's ``ResourceNotFoundError``): the run or job does not exist (yet)."""
    if status_code_of(exc) == 404:
        return True
    return any(type(item).__name__ == "ResourceNotFoundError" for item in _chain(exc))


def is_auth_error(exc: BaseException) -> bool:
    """A 401/403 or a failed sign-in: the credential in use cannot reach the workspace."""
    if status_code_of(exc) in (401, 403):
        return True
    names = {cls.__name__ for item in _chain(exc) for cls in type(item).__mro__}
    return bool(names & _AUTH_TYPES)


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
