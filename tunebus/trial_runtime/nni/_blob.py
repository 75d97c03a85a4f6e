"""Appending one record to the trial's results blob (Append Block) through its SAS URL.

The URL names one append blob, created by the submitter before the trial started, and its SAS
may only append to it: nothing else can be done with it, and nothing else is tried here.
Imported on a trial's first report only. Over https (Azure) this is http.client; over plain
http (Azurite, on the submitter's machine) it is a socket and a dozen lines of HTTP/1.1,
because http.client imports ssl and the email package, which would be most of a short
trial's start-up (benchmarks/README_startup.md). Transient failures (connection errors,
5xx, 408, 429) are retried a few times with a short back-off; anything else fails at once,
naming the blob and the status, never the SAS signature.
"""

from __future__ import annotations

import time

# typing is not imported at run time (annotations are strings): it would cost more than this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["RETRY_DELAYS", "ResultsWriter"]

#: Seconds to wait before each retry; its length is the number of retries. About half a minute
#: in all: storage that restarts (a deployment's Azurite, a blip in Azure) does not fail the trial.
RETRY_DELAYS = (0.1, 0.3, 0.7, 1.5, 3.0, 5.0, 10.0, 10.0)

_HEADERS = {"x-ms-version": "2021-08-06"}
_TRANSIENT_STATUS = frozenset({408, 429})
_TIMEOUT = 30.0
_MAX_RESPONSE = 64 * 1024


class _Transient(Exception):
    pass


class ResultsWriter:
    """Appends records to the blob ``blob_url`` (``http(s)://host/account/container/blob?<sas>``)."""

    def __init__(self, blob_url: str, *, retry_delays: tuple[float, ...] | None = None) -> None:
        scheme, sep, rest = blob_url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError("TUNEBUS_METRICS_URL must be an http(s):// blob URL")
        host, _, path_query = rest.partition("/")
        path, _, query = path_query.partition("?")
        if not host or path.strip("/").count("/") < 1:
            raise ValueError("TUNEBUS_METRICS_URL must name a host, a container and a blob")
        self._https = scheme == "https"
        self._host = host
        # The path comes encoded already (the submitter quoted it); sent as given.
        self._target = "/" + path.strip("/") + "?" + (query + "&" if query else "") + "comp=appendblock"
        self._blob_name = path.strip("/").split("/", 2)[-1]
        self._retry_delays = RETRY_DELAYS if retry_delays is None else retry_delays
        self._conn: Any = None  # an http.client.HTTPSConnection, kept alive between reports

    def _connection(self) -> Any:
        if self._conn is None:
            import http.client

            self._conn = http.client.HTTPSConnection(self._host, timeout=_TIMEOUT)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def append(self, body: bytes) -> None:
        """Append ``body`` (one record) to the results blob; raises on failure."""
        last = ""
        for attempt in range(len(self._retry_delays) + 1):
            if attempt:
                time.sleep(self._retry_delays[attempt - 1])
            try:
                self._put_once(self._target, self._blob_name, body)
                return
            except _Transient as exc:
                last = str(exc)
        raise _report_error(
            f"could not append to the results blob {self._blob_name} after "
            f"{len(self._retry_delays) + 1} attempts: {last}"
        )

    def _put_once(self, target: str, blob_name: str, body: bytes) -> None:
        headers = {**_HEADERS, "Content-Length": str(len(body))}
        try:
            if self._https:
                status, reason, code, detail = self._put_https(target, headers, body)
            else:
                status, reason, code, detail = _put_plain_http(self._host, target, headers, body)
        except (OSError, ValueError) as exc:  # http.client's errors are ValueErrors or OSErrors
            self._drop_connection()
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return
        what = f"HTTP {status} {reason}" + (f" ({code})" if code else "")
        if status >= 500 or status in _TRANSIENT_STATUS:
            raise _Transient(what)
        hint = ""
        if status == 403:
            hint = "; the SAS in TUNEBUS_METRICS_URL may have expired"
        elif status == 404:
            hint = "; the results blob does not exist (only the submitter creates it)"
        # Azure names the problem in x-ms-error-code; the body repeats it as XML. Other servers
        # (proxies) may only explain themselves in the body.
        body_text = "" if code else " ".join(detail.decode("utf-8", "replace").split())[:300]
        detail_text = f": {body_text}" if body_text else ""
        raise _report_error(f"results blob {blob_name} refused the append: {what}{hint}{detail_text}")

    def _put_https(self, target: str, headers: dict[str, str], body: bytes) -> tuple[int, str, str, bytes]:
        import http.client

        try:
            conn = self._connection()
            conn.request("PUT", target, body=body, headers=headers)
            response = conn.getresponse()
            detail = response.read(2048)
        except http.client.HTTPException as exc:
            raise ValueError(str(exc)) from None
        if response.will_close or not 200 <= response.status < 300:
            self._drop_connection()
        return response.status, response.reason, response.getheader("x-ms-error-code") or "", detail


def _put_plain_http(host: str, target: str, headers: dict[str, str],
                    body: bytes) -> tuple[int, str, str, bytes]:
    """One PUT over a fresh connection (``Connection: close``); (status, reason, error code, body)."""
    import _socket

    name, port = _split_host(host)
    # An ASCII host goes as bytes: a str is encoded with the idna codec, one more import.
    host_arg = name.encode("ascii") if name.isascii() else name
    family, kind, proto, _, address = _socket.getaddrinfo(host_arg, port, 0, _socket.SOCK_STREAM)[0]
    sock = _socket.socket(family, kind, proto)
    sock.settimeout(_TIMEOUT)
    try:
        sock.connect(address)
        head = f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        head += "".join(f"{key}: {value}\r\n" for key, value in headers.items()) + "\r\n"
        sock.sendall(head.encode("latin-1") + body)
        response = b""
        while len(response) < _MAX_RESPONSE:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    finally:
        sock.close()
    return _parse_response(response)


def _split_host(host: str) -> tuple[str, int]:
    if host.startswith("["):  # [::1]:10000
        name, _, rest = host[1:].partition("]")
        return name, int(rest.lstrip(":") or 80)
    name, _, port = host.partition(":")
    return name, int(port or 80)


def _parse_response(response: bytes) -> tuple[int, str, str, bytes]:
    head, sep, detail = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    code = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "x-ms-error-code":
            code = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", code, detail[:2048]


def _report_error(message: str) -> Exception:
    from . import MetricReportError

    return MetricReportError(message)
