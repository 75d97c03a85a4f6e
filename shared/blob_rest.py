"""A small synchronous Azure Blob REST client with Shared Key auth, on the standard library alone.

Why it exists: importing ``azure.storage.blob`` (with aiohttp and azure.core) costs the CLI a
large part of its start-up (benchmarks/README_startup.md), and the CLI needs only a handful of
blob operations. ``http.client`` (which pulls in ``ssl`` and ``email``) is imported by the first
request, ``json`` by :meth:`BlobRestClient.get_json`. The protocol itself (signing, paths,
replies) is in :mod:`shared.blob_protocol`; what the CLI needs of it is re-exported here.

    client = BlobRestClient.from_connection_string(conn, "tunebus")
    client.put_blob("experiments/x/code.tar.gz", data, content_type="application/gzip")
    state = client.get_json("experiments/x/state.json")   # None if it does not exist
    client.close()
"""

from __future__ import annotations

import _thread  # threading's Lock without threading's import cost
import time
from urllib.parse import quote, urlsplit

from shared.blob_protocol import (
    BlobRestError,
    StorageAccount,
    blob_url_path,
    canonicalized_resource,
    error_message,
    parse_connection_string,
    parse_listing,
    sign_request,
)

# Not ``typing.TYPE_CHECKING``: importing typing alone would cost a third of this module's budget.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from http.client import HTTPConnection, HTTPResponse
    from typing import Any

__all__ = [
    "MAX_PUT_BLOB_BYTES",
    "BlobRestClient",
    "BlobRestError",
    "StorageAccount",
    "parse_connection_string",
]

#: The largest blob :meth:`BlobRestClient.put_blob` sends in one request.
MAX_PUT_BLOB_BYTES = 256 * 1024 * 1024

_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_ATTEMPTS = 3


class _Reply:
    """A whole HTTP reply: status, headers (lower-case names) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class BlobRestClient:
    """Blob operations on one container over keep-alive HTTP; synchronous and thread-safe.

    One connection is kept open and reused; threads that call at the same time each get one
    of their own (kept for reuse afterwards). A connection that fails is dropped and the
    request is sent once more on a new one; 500, 502, 503 and 504 are retried too, with a
    short back-off. Every operation here is idempotent, so a repeat is safe.
    """

    def __init__(self, account: StorageAccount, container: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(account.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported blob endpoint {account.endpoint!r}: want http(s)://host[:port][/path]")
        self.account = account
        self.container = container
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base_path = parts.path.rstrip("/")
        self._idle: list[HTTPConnection] = []
        self._lock = _thread.allocate_lock()

    @classmethod
    def from_connection_string(cls, conn: str, container: str, *, timeout: float = 30.0) -> BlobRestClient:
        """A client for ``container`` in the account a connection string names."""
        return cls(StorageAccount.from_connection_string(conn), container, timeout=timeout)

    def __repr__(self) -> str:
        return f"BlobRestClient(endpoint={self.account.endpoint!r}, container={self.container!r})"

    def __enter__(self) -> BlobRestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout: float | None = None) -> None:
        """Open a keep-alive connection now (TCP, and TLS for https) instead of at the first request.

        Lets a caller learn early, within ``timeout`` seconds (default: the client's), whether
        the endpoint answers, and take the connection's set-up off a later critical path.
        Raises :class:`OSError` (``TimeoutError``, ``ConnectionRefusedError``...) if it does not.
        """
        conn = self._checkout()
        if conn.sock is None:
            conn.timeout = self.timeout if timeout is None else timeout
            try:
                conn.connect()
            except OSError:
                conn.close()
                raise
            conn.timeout = self.timeout
            assert conn.sock is not None
            conn.sock.settimeout(self.timeout)
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the kept connections (a later request opens a new one)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------ operations

    def ensure_container(self) -> None:
        """Create the container unless it exists already."""
        reply = self._request("PUT", "", {"restype": "container"})
        if reply.status == 409 and reply.headers.get("x-ms-error-code") == "ContainerAlreadyExists":
            return
        self._check(reply, "Create Container", repr(self.container))

    def put_blob(self, name: str, data: bytes | bytearray | memoryview,
                 content_type: str | None = None, *, create_only: bool = False) -> None:
        """Write (overwrite) a block blob in one request; at most :data:`MAX_PUT_BLOB_BYTES`.

        ``create_only`` writes only if no such blob exists: otherwise :class:`BlobRestError`
        with status 409 and code ``BlobAlreadyExists``.
        """
        body = bytes(data)
        if len(body) > MAX_PUT_BLOB_BYTES:
            raise ValueError(f"blob {name!r} is {len(body)} bytes; put_blob sends at most "
                             f"{MAX_PUT_BLOB_BYTES} bytes (256 MiB) in one request")
        headers = {"x-ms-blob-type": "BlockBlob"}
        if content_type:
            headers["content-type"] = content_type
        if create_only:
            headers["if-none-match"] = "*"
        reply = self._request("PUT", name, {}, headers, body)
        self._check(reply, "Put Blob", name=name)

    def get_blob(self, name: str) -> bytes | None:
        """The blob's content, or None if it (or its container) does not exist."""
        reply = self._request("GET", name)
        if reply.status == 404:
            return None
        self._check(reply, "Get Blob", name=name)
        return reply.body

    def get_json(self, name: str) -> Any | None:
        """The blob parsed as JSON, or None if it does not exist."""
        import json

        data = self.get_blob(name)
        return None if data is None else json.loads(data)

    def exists(self, name: str) -> bool:
        """Whether the blob exists (False as well when the container does not)."""
        reply = self._request("HEAD", name)
        if reply.status == 404:
            return False
        self._check(reply, "Get Blob Properties", name=name)
        return True

    def list_names(self, prefix: str = "", delimiter: str | None = None, *,
                   page_size: int | None = None, limit: int | None = None) -> list[str]:
        """Names under ``prefix``, sorted, following every page of the listing.

        With a ``delimiter`` the listing is one level deep, like a directory: the blobs at that
        level and the virtual folders below it, whose names end with the delimiter. ``page_size``
        sets ``maxresults`` (the service's default page is 5000); ``limit`` stops early once
        that many names are known. A missing container raises :class:`BlobRestError` (404).
        """
        names: list[str] = []
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list"}
            query.update((k, v) for k, v in (("prefix", prefix), ("delimiter", delimiter or ""),
                                              ("marker", marker)) if v)
            if page_size is not None:
                query["maxresults"] = str(page_size)
            reply = self._request("GET", "", query)
            self._check(reply, "List Blobs", f"in container {self.container!r} under prefix {prefix!r}")
            page, marker = parse_listing(reply.body)
            names += page
            if not marker or (limit is not None and len(names) >= limit):
                # Sorted here: Azurite lists a page's virtual folders before its blobs.
                return sorted(names)[:limit]

    # ------------------------------------------------------------ transport

    def _path(self, name: str) -> str:
        return blob_url_path(self._base_path, self.container, name)

    def _request(self, method: str, name: str, query: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None, body: bytes = b"") -> _Reply:
        """Send one signed request, retrying dropped connections and 5xx; the whole reply."""
        query = query or {}
        path = self._path(name)
        url = path + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items()) if query else "")
        resource = canonicalized_resource(self.account.name, path, query)
        for attempt in range(1, _ATTEMPTS + 1):
            signed = sign_request(self.account, method, headers or {}, len(body), resource)
            try:
                reply = self._exchange(method, url, signed, body)
            except OSError as exc:  # refused, reset, dropped keep-alive (http.client's errors too)
                if attempt == _ATTEMPTS or isinstance(exc, TimeoutError):  # a timeout has waited enough
                    raise
            else:
                if reply.status not in _RETRY_STATUSES or attempt == _ATTEMPTS:
                    return reply
            time.sleep(0.05 * 4 ** (attempt - 1))
        raise AssertionError("unreachable")


    def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes) -> _Reply:
        import http.client

        conn = self._checkout()
        try:
            conn.request(method, url, body=body or None, headers=headers)
            response: HTTPResponse = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(f"blob service at {self.account.endpoint}: {exc!r}") from exc
        reply = _Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        with self._lock:
            self._idle.append(conn)
        return reply

    def _checkout(self) -> HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        import http.client

        if self._https:
            import ssl

            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _check(self, reply: _Reply, operation: str, target: str = "", *, name: str | None = None) -> None:
        """Raise :class:`BlobRestError` unless the reply is a success (2xx)."""
        if 200 <= reply.status < 300:
            return
        if name is not None:
            target = f"{name!r} in container {self.container!r}"
        code = reply.headers.get("x-ms-error-code")
        message = error_message(reply.body) or "no message"
        raise BlobRestError(operation, target, reply.status, code, message, blob=name)
