"""Blob storage: the system of record. Layout of an experiment's folder and a small async store.

```
experiments/<exp>/experiment.json          config (NNI v2, wire form: no secret) and search space
experiments/<exp>/secrets.json             the config's secrets (sharedStorage account key), if any
experiments/<exp>/code.tar.gz              the trial code snapshot
experiments/<exp>/state.json               the dispatcher's state document (ETag-conditional writes)
experiments/<exp>/trials/<trial>/trial.json     parameters, job reference, status (the submitter's)
experiments/<exp>/trials/<trial>/metrics/<seq>.json  one metric, written by the trial itself
experiments/<exp>/trials/<trial>/stdout.log, stderr.log
```

With an AzureBlob ``sharedStorage`` the trial's ``metrics/`` folder is in that account and
container instead, at the same path (see :mod:`shared.results`); everything else stays here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerSasPermissions, ContentSettings, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from shared.layout import Layout

__all__ = [
    "SAS_CLOCK_SKEW",
    "BlobStore",
    "ConcurrentWriteError",
    "Layout",
    "account_connection_string",
    "parse_connection_string",
    "write_only_sas_token",
]

#: Start a SAS this long before now: the clocks of the signer and Azure Storage differ.
SAS_CLOCK_SKEW = timedelta(minutes=5)


_JSON = ContentSettings(content_type="application/json")


class ConcurrentWriteError(Exception):
    """A conditional write lost: the blob changed (or exists) since it was read."""


def parse_connection_string(conn: str) -> dict[str, str]:
    """Split an Azure Storage connection string into its fields."""
    parts = (p.split("=", 1) for p in conn.split(";") if "=" in p)
    return {k.strip(): v.strip() for k, v in parts}


def account_connection_string(account: str, key: str, endpoint: str) -> str:
    """A connection string for ``account`` at its blob ``endpoint`` (URL), signed with ``key``."""
    protocol = endpoint.split("://", 1)[0] if "://" in endpoint else "https"
    return (f"DefaultEndpointsProtocol={protocol};AccountName={account};AccountKey={key};"
            f"BlobEndpoint={endpoint.rstrip('/')};")


def write_only_sas_token(account: str, container: str, key: str, lifetime: timedelta, *,
                         now: datetime | None = None) -> str:
    """A container SAS token that may create and write blobs only (no read, list or delete).

    It starts :data:`SAS_CLOCK_SKEW` before ``now`` and expires ``lifetime`` after it. The key
    signs it and stays with the caller: only the token goes to a trial.
    """
    now = now or datetime.now(UTC)
    return generate_container_sas(
        account_name=account,
        container_name=container,
        account_key=key,
        permission=ContainerSasPermissions(create=True, write=True),
        start=now - SAS_CLOCK_SKEW,
        expiry=now + lifetime,
    )


class BlobStore:
    """Async access to one container. JSON documents carry their ETag for conditional writes."""

    def __init__(self, connection_string: str, container: str) -> None:
        self.connection_string = connection_string
        self.container_name = container
        self._service = BlobServiceClient.from_connection_string(connection_string)
        self._container: ContainerClient = self._service.get_container_client(container)

    async def ensure_container(self) -> None:
        """Create the container if it does not exist."""
        try:
            await self._container.create_container()
        except ResourceExistsError:
            pass

    async def close(self) -> None:
        await self._container.close()
        await self._service.close()

    async def __aenter__(self) -> BlobStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ bytes

    async def read_bytes(self, path: str) -> bytes | None:
        """The blob's content, or None if it does not exist."""
        try:
            downloader = await self._container.download_blob(path)
            return await downloader.readall()
        except ResourceNotFoundError:
            return None

    async def write_bytes(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        """Write (overwrite) a blob."""
        settings = ContentSettings(content_type=content_type) if content_type else None
        await self._container.upload_blob(path, data, overwrite=True, content_settings=settings)

    async def list(self, prefix: str) -> list[str]:
        """Names of the blobs under ``prefix``, sorted."""
        return sorted([b.name async for b in self._container.list_blobs(name_starts_with=prefix)])

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every blob under ``prefix``."""
        for name in await self.list(prefix):
            try:
                await self._container.delete_blob(name)
            except ResourceNotFoundError:
                pass

    # ------------------------------------------------------------------ JSON documents

    async def read_json(self, path: str) -> tuple[Any, str] | None:
        """``(document, etag)``, or None if the blob does not exist."""
        try:
            downloader = await self._container.download_blob(path)
            data = await downloader.readall()
        except ResourceNotFoundError:
            return None
        return json.loads(data), str(downloader.properties.etag)

    async def write_json(self, path: str, doc: Any, *, etag: str | None = None,
                         create_only: bool = False) -> str:
        """Write a JSON document; returns the new ETag.

        ``etag`` makes the write conditional on the blob being unchanged since it was read;
        ``create_only`` makes it conditional on the blob not existing. Losing either condition
        raises :class:`ConcurrentWriteError`.
        """
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        return await self.write_document(path, body, etag=etag, create_only=create_only)

    async def write_document(self, path: str, body: bytes, *, etag: str | None = None,
                             create_only: bool = False) -> str:
        """:meth:`write_json` for a document already serialised; returns the new ETag."""
        from azure.core import MatchConditions

        kwargs: dict[str, Any] = {"content_settings": _JSON}
        if create_only:
            kwargs["overwrite"] = False
        else:
            kwargs["overwrite"] = True
            if etag is not None:
                kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
        try:
            result = await self._container.get_blob_client(path).upload_blob(body, **kwargs)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise ConcurrentWriteError(path) from exc
        return str(result["etag"])

    # ------------------------------------------------------------------ SAS

    def write_only_sas_url(self, lifetime: timedelta) -> str:
        """A container URL whose SAS can create and write blobs only (no read, list or delete).

        This is all a trial gets: it can add its metrics and logs, and nothing else.
        """
        fields = parse_connection_string(self.connection_string)
        account, key = fields["AccountName"], fields["AccountKey"]
        token = write_only_sas_token(account, self.container_name, key, lifetime)
        return f"{self._container.url}?{token}"
