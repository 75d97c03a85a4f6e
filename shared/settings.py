"""Service settings from environment variables (prefix ``TUNEBUS_``), one class per service."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AZURITE_CONNECTION_STRING", "DEFAULT_SHARED_STORAGE_ENDPOINT", "CommonSettings"]

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
    storage_connection_string: str = AZURITE_CONNECTION_STRING
    storage_container: str = "tunebus"
    health_file: str | None = None
    log_level: str = "INFO"
    # The blob endpoint of a sharedStorage account, ``{account}`` standing for its name:
    # e.g. http://127.0.0.1:10000/{account} for Azurite, or a sovereign cloud's endpoint.
    shared_storage_endpoint: str = DEFAULT_SHARED_STORAGE_ENDPOINT
