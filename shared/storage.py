"""The services' blob store (the system of record): bytes, JSON documents with their ETags,
append blobs and results SAS URLs on one container. Where each document lives:
:mod:`shared.layout` (the tree is drawn in docs/architecture.md, door 2)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shared.blob_protocol import BlobRestError, error_message, parse_connection_string, parse_listing
from shared.blob_sas import SAS_CLOCK_SKEW, account_connection_string, results_sas_token
from shared.blob_transport import ContainerTransport, size_from_416
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

#: Blocks of a file uploaded by :meth:`BlobStore.upload_file_tail` (a trial's log).
UPLOAD_BLOCK_BYTES = 4 << 20


class ConcurrentWriteError(Exception):
    """A conditional write lost: the blob changed (or exists) since it was read."""


class ContainerNotFoundError(BlobRestError):
    """The container does not exist (HTTP 404 ``ContainerNotFound``)."""


class BlobStore(ContainerTransport):
    """Async access to one container. JSON documents carry their ETag for conditional writes.

    Every request is sent again after a transient failure (:class:`ContainerTransport`). A
    conditional write whose answer was lost and whose repeat then finds the blob changed reads
    it back: if it holds what was written, the write happened.
    """

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
            return b"", size_from_416(reply)
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
