"""The services' async HTTP to one blob container: Shared Key signing, retries, errors named.

Blob REST on one keep-alive aiohttp session, not the azure-storage-blob SDK, whose pipeline
costs several times the CPU per request (benchmarks/README_startup.md): every trial costs the
services several requests. :class:`shared.storage.BlobStore` builds its operations on this.
"""

from __future__ import annotations

import asyncio
import os
from typing import Self
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from shared.blob_protocol import (
    BlobRestError,
    StorageAccount,
    blob_url_path,
    canonicalized_resource,
    error_message,
    sign_request,
)

__all__ = ["KEEPALIVE_SECONDS", "RETRY_DELAYS", "BlobReply", "ContainerTransport", "size_from_416"]

#: Seconds before each retry of a request that failed in transit or with a transient status.
RETRY_DELAYS = (0.05, 0.2, 0.8, 2.0)
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Seconds an idle kept-alive connection is reused for.
KEEPALIVE_SECONDS = 4.0
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


class BlobReply:
    """A whole HTTP reply: status, headers (lower-case names) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> str | None:
        return self.headers.get("x-ms-error-code")


def size_from_416(reply: BlobReply) -> int:
    """The blob size a 416 reply states (``Content-Range: bytes */<size>``), 0 when it does not."""
    total = reply.headers.get("content-range", "").rpartition("/")[2]
    return int(total) if total.isascii() and total.isdigit() else 0


class ContainerTransport:
    """Signed requests to one container over one keep-alive session.

    Requests that fail in transit (connection refused or reset, timeout) or with 408, 429 or
    5xx are sent again after a short back-off (:data:`RETRY_DELAYS`): every request made
    through this must be safe to repeat. Other failures raise :class:`BlobRestError`, naming
    the operation, the blob, the status and Azure's error code.
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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _get(self, name: str) -> BlobReply | None:
        reply = await self._request("GET", name)
        if reply.status == 404:
            return None
        self._check(reply, "Get Blob", name=name)
        return reply

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
                       headers: dict[str, str] | None = None, body: bytes = b"") -> BlobReply:
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
                    reply = BlobReply(response.status, {k.lower(): v for k, v in response.headers.items()},
                                   await response.read())
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if attempt == len(RETRY_DELAYS):
                    raise ConnectionError(f"{method} {self._origin}{path}: {exc!r}") from exc
            else:
                if reply.status not in _TRANSIENT_STATUSES or attempt == len(RETRY_DELAYS):
                    return reply
            await asyncio.sleep(RETRY_DELAYS[attempt])
        raise AssertionError("unreachable")

    def _check(self, reply: BlobReply, operation: str, target: str = "", *, name: str | None = None) -> None:
        if 200 <= reply.status < 300:
            return
        if name is not None:
            target = f"{name!r} in container {self.container_name!r}"
        raise BlobRestError(operation, target, reply.status, reply.code,
                            error_message(reply.body) or "no message", blob=name)
