"""Masking secrets wherever text leaves a process: dead letters, logs, stored errors, CLI output.

Two entry points, one notion of a secret:

* :func:`mask_secrets` for free text (a log line, a traceback, a trial's stderr tail, a reason);
* :func:`redact_secrets` for JSON-like documents (a dead-lettered message's body, a config to
  show): a value under a secret-named key is replaced whole, and every string is also passed
  through :func:`mask_secrets` (a connection string or SAS URL under an innocent key).

The shapes masked, each keeping enough to tell what it was:

* connection-string fields: ``AccountKey=...``, ``SharedAccessKey=...``,
  ``SharedAccessSignature=...``, ``Password=...`` (Azure Storage, Service Bus, ODBC);
* a SAS's signature in a URL or query: ``sig=...`` (``se``, ``sp`` and the rest stay: they say
  when and what, not how to get in);
* a password in a URL's user info: ``amqp://user:pass@host`` -> ``amqp://user:***@host``;
* ``name=value`` and ``name: value`` (JSON and YAML too) where the name is secret-like:
  ``storageAccountKey``, ``sharedStorageAccountKey``, ``AZURE_CLIENT_SECRET``, ``password``,
  ``api_key``, ``access_key``, ``sas_token``, ... (:data:`SECRET_NAME`).

Masking is idempotent, and text without these shapes comes back unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "SECRET_MASK",
    "SECRET_NAME",
    "SecretMaskingFilter",
    "install_log_masking",
    "is_secret_name",
    "mask_secrets",
    "redact_secrets",
]

#: What a secret is replaced with.
SECRET_MASK = "***"

#: A key name that holds a secret, matched case-insensitively at the name's end, ``-`` and ``.``
#: read as ``_``: ``storageAccountKey``, ``sharedStorageAccountKey``, ``AZURE_CLIENT_SECRET``.
SECRET_NAME = re.compile(
    r"(?:account_?key|shared_?access_?(?:key|signature)|client_?secret|secret(?:_?key)?|password|passwd"
    r"|access_?key|api_?key|sas_?token|private_?key)$",
    re.IGNORECASE,
)

# Every repetition is bounded or terminal and names start only at a token's start, so that
# masking a long line stays linear in its length.
# name = value / name: value, the name and the value optionally quoted (JSON, YAML, env,
# connection strings, Python reprs); an unquoted value runs until whitespace or a separator.
_NAME_SEP = re.compile(
    r"""(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z][A-Za-z0-9_.-]{0,80})['"]?[ \t]{0,8}[:=][ \t]{0,8}"""
)
_QUOTED_VALUE = re.compile(r"""(?P<quote>['"])(?P<value>[^'"\n]{1,4096})(?P=quote)""")
_BARE_VALUE = re.compile(r"""(?P<quote>)(?P<value>[^\s;&,'"<>}\]]+)""")
# A SAS signature: sig=... in a query string (also URL-encoded inside another URL: sig%3D...).
_SAS_SIG = re.compile(r"(?P<prefix>(?:^|[?&;\s]|%26|%3F)sig(?:=|%3D))(?P<value>[^&\s'\"<>;]+)", re.IGNORECASE)
# user:password@ in a URL's authority (a "/" in an unencoded password included: masking too much is safe).
_URL_PASSWORD = re.compile(
    r"(?P<prefix>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/@]{0,256}:)(?P<value>[^\s@]{1,256}+)(?=@)"
)


def is_secret_name(name: str) -> bool:
    """Whether a key called ``name`` holds a secret (any spelling: camelCase, snake_case, UPPER)."""
    return SECRET_NAME.search(name.replace("-", "_").replace(".", "_")) is not None


def _mask_named_values(text: str) -> str:
    # A search, not re.sub: after a name that is no secret the scan goes on *inside* its value
    # (``CONN='AccountKey=...'``), and a value is read only after a secret's name.
    pieces: list[str] = []
    pos = 0
    while (name := _NAME_SEP.search(text, pos)) is not None:
        end = name.end()
        value = None
        if is_secret_name(name["name"]):
            value = _QUOTED_VALUE.match(text, end) or _BARE_VALUE.match(text, end)
        if value is None or value["value"] == SECRET_MASK:
            pieces.append(text[pos:end])
            pos = end
            continue
        pieces.append(f"{text[pos:end]}{value['quote']}{SECRET_MASK}{value['quote']}")
        pos = value.end()
    pieces.append(text[pos:])
    return "".join(pieces)


def mask_secrets(text: str) -> str:
    """``text`` with every secret shape (see the module docstring) masked as ``***``."""
    if not text:
        return text
    if "@" in text:
        text = _URL_PASSWORD.sub(lambda m: m["prefix"] + SECRET_MASK, text)
    if "sig" in text.lower():  # cheap checks first: most lines have neither shape
        text = _SAS_SIG.sub(lambda m: m["prefix"] + SECRET_MASK, text)
    return _mask_named_values(text)


def redact_secrets(value: Any) -> Any:
    """``value`` (JSON-like) with every secret masked, at any depth and in any spelling.

    A value under a secret-named key becomes ``"***"`` (``None`` stays ``None``: nothing to
    hide); every other string goes through :func:`mask_secrets`.
    """
    if isinstance(value, Mapping):
        return {
            key: SECRET_MASK if isinstance(key, str) and is_secret_name(key) and item is not None
            else redact_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(item) for item in value]
    if isinstance(value, str):
        return mask_secrets(value)
    return value


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in a record's formatted message and in its traceback, before any handler
    writes it. Installed on handlers (a logger's own filters do not see its children's records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def install_log_masking(logger: logging.Logger | None = None) -> None:
    """Add a :class:`SecretMaskingFilter` to every handler of ``logger`` (the root by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())
