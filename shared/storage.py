"""Blob storage: the system of record. Layout of an experiment's folder and a small async store.

```
experiments/<exp>/experiment.json          config (NNI v2, wire form: no secret) and search space
experiments/<exp>/secrets.json             the config's secrets (sharedStorage account key), if any
experiments/<exp>/code.tar.gz              the trial code snapshot
experiments/<exp>/algorithms/<role>.tar.gz a custom tuner's / assessor's code (its codeDirectory)
experiments/<exp>/state.json               the dispatcher's summary: experiment fields, outbox, active
                                           trials, counts (ETag-conditional writes; shared.state)
experiments/<exp>/trials-ended/<n>.jsonl   the ended trials' records, append blobs (shared.records)
experiments/<exp>/trials/<trial>/trial.json     parameters, job reference, status (the submitter's)
experiments/<exp>/trials/<trial>/results.jsonl   the attempt's results: an append blob, one
                                                line per report, appended by the trial itself
experiments/<exp>/trials/<trial>/stdout.log, stderr.log
```
(A second attempt of a trial has its own ``trials/<trial>/attempt-<n>/`` folder.)

With an AzureBlob ``sharedStorage`` the trial's ``results.jsonl`` is in that account and
container instead, at the same path (see :mod:`shared.results`); everything else stays here.

:class:`BlobStore` speaks the Blob REST API over one keep-alive aiohttp session, signing with
the account's Shared Key (:mod:`shared.blob_rest` holds the signing, paths and XML parsing it
shares with the CLI). Not the azure-storage-blob SDK: its pipeline costs several times the CPU
per request (benchmarks/README_startup.md), and every trial costs the services several
requests. The SDK still makes the SAS tokens (a local computation).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from yarl import URL

from shared.blob_rest import (
    BlobRestError,
    StorageAccount,
    blob_url_path,
    canonicalized_resource,
    error_message,
    parse_connection_string,
    parse_listing,
    sign_request,
)
from shared.layout import Layout

__all__ = [
    "SAS_CLOCK_SKEW",
    "BlobRestError",
    "BlobStore",
    "ConcurrentWriteError",
    "ContainerNotFoundError",
    "Layout",
    "account_connection_string",
    "parse_connection_string",
    "results_sas_token",
]

#: Start a SAS this long before now: the clocks of the signer and Azure Storage differ.
SAS_CLOCK_SKEW = timedelta(minutes=5)

#: Seconds before each retry of a request that failed in transit or with a transient status.
RETRY_DELAYS = (0.05, 0.2, 0.8, 2.0)
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Seconds an idle kept-alive connection is reused for.
KEEPALIVE_SECONDS = 4.0
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


#: Blocks of a file uploaded by :meth:`BlobStore.upload_file_tail` (a trial's log).
UPLOAD_BLOCK_BYTES = 4 << 20

class ConcurrentWriteError(Exception):
    """A conditional write lost: the blob changed (or exists) since it was read."""


class ContainerNotFoundError(BlobRestError):
    """The container does not exist (HTTP 404 ``ContainerNotFound``)."""


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


class _Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> str | None:
        return self.headers.get("x-ms-error-code")


def _size_from_416(reply: _Reply) -> int:
    """The blob size a 416 reply states (``Content-Range: bytes */<size>``), 0 when it does not."""
    total = reply.headers.get("content-range", "").rpartition("/")[2]
    return int(total) if total.isascii() and total.isdigit() else 0


class BlobStore:
    """Async access to one container. JSON documents carry their ETag for conditional writes.

    Requests that fail in transit (connection refused or reset, timeout) or with 408, 429 or
    5xx are sent again after a short back-off (:data:`RETRY_DELAYS`); every request here is
    safe to repeat. A conditional write whose answer was lost and whose repeat then finds the
    blob changed reads it back: if it holds what was written, the write happened. Other
    failures raise :class:`BlobRestError`, naming the operation, the blob, the status and
    Azure's error code.
    """

    def __init__(self, connection_string: str, container: str, *, timeout: float = 30.0) -> None:
        self.connection_string = connection_string
        self.container_name = container
        self.account = StorageAccount.from_connection_string(connection_string)
        parts = urlsplit(self.account.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported blob endpoint {self.account.endpoint!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        # Per step, not per request: a large log upload may take longer than `timeout` in all.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def container_url(self) -> str:
        """The container's URL (no query)."""
        return f"{self.account.endpoint}/{quote(self.container_name, safe='')}"

    async def ensure_container(self) -> None:
        """Create the container if it does not exist."""
        reply = await self._request("PUT", "", {"restype": "container"})
        if reply.status == 409 and reply.code == "ContainerAlreadyExists":
            return
        self._check(reply, "Create Container", repr(self.container_name))

    async def check(self) -> None:
        """Return when the container answers (Get Container Properties), raise when not: the
        health check. A missing container fails it too: the services cannot work without it."""
        reply = await self._request("GET", "", {"restype": "container"})
        self._check(reply, "Get Container Properties", repr(self.container_name))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> BlobStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ bytes

    async def read_bytes(self, path: str) -> bytes | None:
        """The blob's content, or None if it does not exist."""
        found = await self._get(path)
        return None if found is None else found.body

    async def write_bytes(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        """Write (overwrite) a blob."""
        await self._put(path, data, content_type)

    async def upload_file_tail(self, path: str, file: Path, *, max_bytes: int,
                               block_bytes: int = UPLOAD_BLOCK_BYTES,
                               content_type: str | None = None) -> int:
        """Upload the last ``max_bytes`` of ``file`` as a block blob, ``block_bytes`` at a time
        (Put Block, then Put Block List): memory stays bounded whatever the file's size. A cut
        file starts with a line saying how much was left out. Returns the bytes left out."""
        size = await asyncio.to_thread(lambda: file.stat().st_size)
        skipped = max(0, size - max_bytes)
        note = f"[tunebus: the first {skipped} bytes of this log were left out]\n" if skipped else ""
        ids: list[str] = []
        with file.open("rb") as stream:
            stream.seek(skipped)
            chunk = note.encode() + await asyncio.to_thread(stream.read, block_bytes)
            while chunk:
                block_id = base64.b64encode(f"{len(ids):08d}".encode()).decode()
                reply = await self._request("PUT", path, {"comp": "block", "blockid": block_id}, None, chunk)
                self._check(reply, "Put Block", name=path)
                ids.append(block_id)
                chunk = await asyncio.to_thread(stream.read, block_bytes)
        listing = "".join(f"<Latest>{i}</Latest>" for i in ids)
        body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{listing}</BlockList>'.encode()
        headers = {"x-ms-blob-content-type": content_type} if content_type else None
        reply = await self._request("PUT", path, {"comp": "blocklist"}, headers, body)
        self._check(reply, "Put Block List", name=path)
        return skipped

    async def list(self, prefix: str, *, page_size: int | None = None,
                   delimiter: str | None = None) -> list[str]:
        """Names of the blobs under ``prefix``, sorted, from every page of the listing
        (``page_size`` names a page; the service's default is 5000). With a ``delimiter`` the
        listing is one level deep: the blobs at that level and the virtual folders below it,
        whose names end with the delimiter. A missing container raises
        :class:`ContainerNotFoundError`."""
        names: list[str] = []
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "prefix": prefix}
            if delimiter:
                query["delimiter"] = delimiter
            if page_size is not None:
                query["maxresults"] = str(page_size)
            if marker:
                query["marker"] = marker
            reply = await self._request("GET", "", query)
            what = f"in container {self.container_name!r} under prefix {prefix!r}"
            if reply.status == 404 and reply.code == "ContainerNotFound":
                raise ContainerNotFoundError("List Blobs", what, 404, reply.code, error_message(reply.body))
            self._check(reply, "List Blobs", what)
            page, marker = parse_listing(reply.body)
            names += page
            if not marker:
                return sorted(names)

    async def delete(self, path: str) -> None:
        """Delete one blob; one that is not there is fine."""
        reply = await self._request("DELETE", path)
        if reply.status != 404:
            self._check(reply, "Delete Blob", name=path)

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every blob under ``prefix``."""
        for name in await self.list(prefix):
            reply = await self._request("DELETE", name)
            if reply.status != 404:
                self._check(reply, "Delete Blob", name=name)

    # ------------------------------------------------------------------ JSON documents

    async def read_document(self, path: str) -> tuple[bytes, str] | None:
        """``(content, etag)``, unparsed, or None if the blob does not exist."""
        found = await self._get(path)
        if found is None:
            return None
        return found.body, found.headers.get("etag", "")

    async def read_document_if_changed(self, path: str, etag: str | None) -> tuple[bytes | None, str] | None:
        """``(content, etag)`` if the blob's ETag is not ``etag``; ``(None, etag)`` if it still is
        (a 304: nothing sent); None if the blob does not exist. What a reader that polls a
        document it keeps parsed uses: an unchanged document costs one round trip, no body."""
        headers = {"if-none-match": etag} if etag else None
        reply = await self._request("GET", path, None, headers)
        if reply.status == 304:
            return None, etag or ""
        if reply.status == 404:
            return None
        self._check(reply, "Get Blob", name=path)
        return reply.body, reply.headers.get("etag", "")

    async def read_json(self, path: str) -> tuple[Any, str] | None:
        """``(document, etag)``, or None if the blob does not exist."""
        found = await self._get(path)
        if found is None:
            return None
        return json.loads(found.body), found.headers.get("etag", "")

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
        return await self._put(path, body, "application/json", etag=etag, create_only=create_only)

    # ------------------------------------------------------------------ append blobs

    async def create_append_blob(self, path: str) -> bool:
        """Create an empty append blob unless one exists; True if this call created it."""
        headers = {"x-ms-blob-type": "AppendBlob", "if-none-match": "*"}
        reply = await self._request("PUT", path, None, headers)
        if reply.status in (409, 412):  # BlobAlreadyExists: a repeated submit keeps what is there
            return False
        self._check(reply, "Put Blob (append)", name=path)
        return True

    async def append_block(self, path: str, data: bytes) -> None:
        """Append ``data`` (one block: all of it or none) to the append blob ``path``.

        A retry after a lost answer may append it twice: callers' records carry ids to dedupe by.
        """
        if not data:
            raise ValueError("append_block wants some bytes to append")
        reply = await self._request("PUT", path, {"comp": "appendblock"}, {}, data)
        self._check(reply, "Append Block", name=path)

    async def read_range(self, path: str, start: int, length: int) -> tuple[bytes, int] | None:
        """At most ``length`` bytes of the blob from offset ``start``, and the blob's whole size;
        None if it does not exist. A ``start`` at or past the end gives ``(b'', size)``."""
        if length <= 0:
            raise ValueError(f"read_range wants a positive length, got {length}")
        headers = {"x-ms-range": f"bytes={start}-{start + length - 1}"}
        reply = await self._request("GET", path, None, headers)
        if reply.status == 404 and reply.code == "ContainerNotFound":
            raise ContainerNotFoundError("Get Blob (range)", repr(path), 404, reply.code,
                                         error_message(reply.body))
        if reply.status == 404:
            return None
        if reply.status == 416:  # InvalidRange: nothing at or after start
            return b"", _size_from_416(reply)
        self._check(reply, "Get Blob (range)", name=path)
        if reply.status == 206:
            total = reply.headers.get("content-range", "").rpartition("/")[2]
            size = int(total) if total.isascii() and total.isdigit() else start + len(reply.body)
            return reply.body[:length], size
        return reply.body[start:start + length], len(reply.body)  # a server that ignored the range

    # ------------------------------------------------------------------ SAS

    def results_sas_url(self, path: str, lifetime: timedelta) -> str:
        """The URL of blob ``path`` with a SAS that may only append to it, for ``lifetime``.

        This is all a trial gets: it can add its own results, and nothing else.
        """
        key = base64.b64encode(self.account.key).decode("ascii")  # as the connection string gave it
        token = results_sas_token(self.account.name, self.container_name, path, key, lifetime)
        return f"{self.container_url}/{quote(path, safe='/~')}?{token}"

    # ------------------------------------------------------------------ transport

    async def _get(self, name: str) -> _Reply | None:
        reply = await self._request("GET", name)
        if reply.status == 404:
            return None
        self._check(reply, "Get Blob", name=name)
        return reply

    async def _put(self, name: str, body: bytes, content_type: str | None, *, etag: str | None = None,
                   create_only: bool = False) -> str:
        headers = {"x-ms-blob-type": "BlockBlob"}
        if content_type:
            headers["x-ms-blob-content-type"] = content_type
        if create_only:
            headers["if-none-match"] = "*"
        elif etag is not None:
            headers["if-match"] = etag
        reply = await self._request("PUT", name, None, headers, body)
        # 409 BlobAlreadyExists (If-None-Match: *) or 412 ConditionNotMet (If-Match).
        if (create_only or etag is not None) and reply.status in (409, 412):
            # A lost answer (a dropped connection, retried here or by aiohttp itself) may hide
            # that this write is what changed the blob: if it holds exactly what was written,
            # the write happened. A real conflict (rare) costs this one read.
            found = await self._get(name)
            if found is not None and found.body == body:
                return found.headers.get("etag", "")
            raise ConcurrentWriteError(name)
        self._check(reply, "Put Blob", name=name)
        return reply.headers.get("etag", "")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Proxy variables are looked at once: with trust_env, aiohttp would read them (and
            # ~/.netrc) again in a thread for every request.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, trust_env=any(os.environ.get(v) for v in _PROXY_VARIABLES),
                auto_decompress=False, skip_auto_headers=("Content-Type",),
                # Shorter than the servers' own idle limit (Node's, so Azurite's, is 5 s): a kept
                # connection the server is closing would fail the request sent on it.
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_SECONDS),
            )
        return self._session

    async def _request(self, method: str, name: str, query: dict[str, str] | None = None,
                       headers: dict[str, str] | None = None, body: bytes = b"") -> _Reply:
        query = query or {}
        path = blob_url_path(self._base_path, self.container_name, name)
        url = self._origin + path
        if query:
            url += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        resource = canonicalized_resource(self.account.name, path, query)
        for attempt in range(len(RETRY_DELAYS) + 1):
            signed = sign_request(self.account, method, headers or {}, len(body), resource)
            try:
                async with self._http().request(method, URL(url, encoded=True),
                                                headers=signed, data=body or None) as response:
                    reply = _Reply(response.status, {k.lower(): v for k, v in response.headers.items()},
                                   await response.read())
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if attempt == len(RETRY_DELAYS):
                    raise ConnectionError(f"{method} {self._origin}{path}: {exc!r}") from exc
            else:
                if reply.status not in _TRANSIENT_STATUSES or attempt == len(RETRY_DELAYS):
                    return reply
            await asyncio.sleep(RETRY_DELAYS[attempt])
        raise AssertionError("unreachable")

    def _check(self, reply: _Reply, operation: str, target: str = "", *, name: str | None = None) -> None:
        if 200 <= reply.status < 300:
            return
        if name is not None:
            target = f"{name!r} in container {self.container_name!r}"
        raise BlobRestError(operation, target, reply.status, reply.code,
                            error_message(reply.body) or "no message", blob=name)
