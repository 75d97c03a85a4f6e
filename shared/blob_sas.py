"""Shared Access Signatures and connection strings, made with the Azure SDK (a local computation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from azure.storage.blob import BlobSasPermissions, generate_blob_sas

__all__ = ["SAS_CLOCK_SKEW", "account_connection_string", "results_sas_token"]

#: Start a SAS this long before now: the clocks of the signer and Azure Storage differ.
SAS_CLOCK_SKEW = timedelta(minutes=5)


def account_connection_string(account: str, key: str, endpoint: str) -> str:
    """A connection string for ``account`` at its blob ``endpoint`` (URL), signed with ``key``."""
    protocol = endpoint.split("://", 1)[0] if "://" in endpoint else "https"
    return (f"DefaultEndpointsProtocol={protocol};AccountName={account};AccountKey={key};"
            f"BlobEndpoint={endpoint.rstrip('/')};")


def results_sas_token(account: str, container: str, blob: str, key: str, lifetime: timedelta, *,
                      now: datetime | None = None) -> str:
    """A SAS token for one blob (``sr=b``) that may only append to it (``sp=a``).

    What a trial gets: with it, Append Block on that blob works and nothing else does — no
    read, list, delete, create or overwrite (Put Blob needs ``c`` or ``w``), on no other blob.
    The blob must exist (the submitter creates it). It starts :data:`SAS_CLOCK_SKEW` before
    ``now`` and expires ``lifetime`` after it; the key signs it and stays with the caller.
    """
    now = now or datetime.now(UTC)
    return generate_blob_sas(
        account_name=account,
        container_name=container,
        blob_name=blob,
        account_key=key,
        permission=BlobSasPermissions(add=True),
        start=now - SAS_CLOCK_SKEW,
        expiry=now + lifetime,
    )
