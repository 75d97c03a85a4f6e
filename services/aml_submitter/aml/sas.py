"""A trial's metrics URL in the experiment's ``sharedStorage`` account (NNI's AzureBlob storage).

Where an experiment names a ``sharedStorage`` of type AzureBlob with an account key, an AML
trial could write its metrics there instead of the deployment's storage. This module makes
that URL: the container URL with a SAS that may create and write blobs only (no read, list
or delete), expiring after the trial's time limit plus a margin — the same rules as
:meth:`shared.storage.BlobStore.write_only_sas_url`.

Status: the metric ingestor reads metrics from the deployment's storage only, so the
submitter does not use this yet; metrics of every trial go to the deployment's storage and
``sharedStorage`` is data the user's own code uses. The function is here, tested against
Azurite, for the day the ingestor reads per-experiment accounts.
The account key is used to sign and never leaves this process: only the SAS token does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

__all__ = ["SKEW", "SharedStorageError", "shared_storage_endpoint", "shared_storage_metrics_url"]

#: Start the SAS this long before now: clocks of the submitter and Azure Storage differ.
SKEW = timedelta(minutes=5)


class SharedStorageError(ValueError):
    """The config's sharedStorage cannot give a metrics URL (wrong type, no key)."""


def shared_storage_endpoint(account: str) -> str:
    """The public blob endpoint of a storage account."""
    return f"https://{account}.blob.core.windows.net"


def _field(section: dict[str, Any], *names: str) -> Any:
    for name in names:
        if section.get(name) is not None:
            return section[name]
    return None


def shared_storage_metrics_url(config: dict[str, Any], lifetime: timedelta, *,
                               endpoint: str | None = None, now: datetime | None = None) -> str:
    """The write-only SAS container URL of the config's ``sharedStorage`` (wire form, camelCase).

    ``endpoint`` overrides the account's public endpoint (Azurite: ``http://127.0.0.1:10000/<account>``).
    Raises :class:`SharedStorageError` when there is no AzureBlob sharedStorage with a key.
    """
    section = config.get("sharedStorage") or {}
    if str(_field(section, "storageType", "storage_type") or "").lower() != "azureblob":
        raise SharedStorageError("the experiment has no sharedStorage of storageType AzureBlob")
    account = _field(section, "storageAccountName", "storage_account_name")
    container = _field(section, "containerName", "container_name")
    key = _field(section, "storageAccountKey", "storage_account_key")
    if not account or not container:
        raise SharedStorageError("sharedStorage needs storageAccountName and containerName")
    if not key:
        raise SharedStorageError("sharedStorage has no storageAccountKey to sign a trial's SAS with")
    now = now or datetime.now(UTC)
    token = generate_container_sas(
        account_name=account, container_name=container, account_key=key,
        permission=ContainerSasPermissions(create=True, write=True),
        start=now - SKEW, expiry=now + lifetime,
    )
    base = (endpoint or shared_storage_endpoint(account)).rstrip("/")
    return f"{base}/{container}?{token}"
