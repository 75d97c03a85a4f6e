"""Service settings from environment variables (prefix ``TUNEBUS_``), one class per service."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AZURITE_CONNECTION_STRING", "DEFAULT_SHARED_STORAGE_ENDPOINT", "LOCAL_DEFAULTS_VARIABLE",
           "CommonSettings", "SettingsMissing", "load_service_settings", "with_password"]

# Azurite's documented development account (public, not a secret).
AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)

#: Where an experiment's ``sharedStorage`` account is reached: Azure's public cloud.
DEFAULT_SHARED_STORAGE_ENDPOINT = "https://{account}.blob.core.windows.net"


class CommonSettings(BaseSettings):
    """What every service (and the CLI) needs: the broker and the system-of-record storage."""

    model_config = SettingsConfigDict(env_prefix="TUNEBUS_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # A file holding the broker password for amqp_url's user (docker-compose mounts one per
    # deployment): the password then appears in no environment variable and no `docker inspect`.
    amqp_password_file: str | None = None
    storage_connection_string: str = AZURITE_CONNECTION_STRING
    storage_container: str = "tunebus"
    health_file: str | None = None
    log_level: str = "INFO"
    # The blob endpoint of a sharedStorage account, ``{account}`` standing for its name:
    # e.g. http://127.0.0.1:10000/{account} for Azurite, or a sovereign cloud's endpoint.
    shared_storage_endpoint: str = DEFAULT_SHARED_STORAGE_ENDPOINT

    @model_validator(mode="after")
    def _password_from_file(self) -> CommonSettings:
        if self.amqp_password_file:
            self.amqp_url = with_password(self.amqp_url, Path(self.amqp_password_file))
        return self

    def known_secrets(self) -> dict[str, str]:
        """The deployment's secrets, by name (none may be uploaded as trial code).

        The storage account key (unless it is Azurite's public development key), the broker's
        password (unless RabbitMQ's default ``guest``) and ``AZURE_CLIENT_SECRET``.
        """
        found: dict[str, str] = {}
        fields = dict(part.split("=", 1) for part in self.storage_connection_string.split(";") if "=" in part)
        key = fields.get("AccountKey")
        if key and key not in AZURITE_CONNECTION_STRING:
            found["the deployment's storage AccountKey (TUNEBUS_STORAGE_CONNECTION_STRING)"] = key
        password = urlsplit(self.amqp_url).password
        if password and password != "guest":
            found["the broker password (TUNEBUS_AMQP_URL)"] = password
        if os.environ.get("AZURE_CLIENT_SECRET"):
            found["AZURE_CLIENT_SECRET"] = os.environ["AZURE_CLIENT_SECRET"]
        return found


def with_password(url: str, password_file: Path) -> str:
    """``url`` with the password read from ``password_file`` (its first line)."""
    try:
        password = password_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"TUNEBUS_AMQP_PASSWORD_FILE {password_file}: {exc.strerror or exc}") from None
    if not password:
        raise ValueError(f"TUNEBUS_AMQP_PASSWORD_FILE {password_file} is empty")
    parts = urlsplit(url)
    if not parts.username:
        raise ValueError("TUNEBUS_AMQP_PASSWORD_FILE needs a user name in TUNEBUS_AMQP_URL "
                         "(amqp://USER@HOST:PORT/)")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: Set to 1, a service may fall back to the local development stack (guest@127.0.0.1, Azurite).
LOCAL_DEFAULTS_VARIABLE = "TUNEBUS_USE_LOCAL_DEFAULTS"
_REQUIRED = ("TUNEBUS_AMQP_URL", "TUNEBUS_STORAGE_CONNECTION_STRING")
S = TypeVar("S", bound=CommonSettings)


class SettingsMissing(ValueError):
    """A service was started without the settings that say which broker and storage it uses."""


def load_service_settings(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """A service's settings, refusing to guess: without ``TUNEBUS_AMQP_URL`` and
    ``TUNEBUS_STORAGE_CONNECTION_STRING`` a service would quietly talk to guest@127.0.0.1 and
    Azurite's public development account, so it needs them set (or ``TUNEBUS_USE_LOCAL_DEFAULTS=1``
    to mean exactly that). The CLI keeps the local defaults (README: Configuration)."""
    environ = os.environ if environ is None else environ
    missing = [name for name in _REQUIRED if not environ.get(name)]
    if missing and environ.get(LOCAL_DEFAULTS_VARIABLE) != "1":
        raise SettingsMissing(f"{' and '.join(missing)} not set: say which broker and storage this service "
                              f"uses (or set {LOCAL_DEFAULTS_VARIABLE}=1 for the local development stack: "
                              "guest@127.0.0.1:5672 and Azurite's development account)")
    try:
        return cls()
    except ValueError as exc:  # pydantic's ValidationError, or a password file's problem
        raise SettingsMissing(str(exc)) from None
