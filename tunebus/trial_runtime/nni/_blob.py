"""Writing one block blob with a PUT through a SAS container URL: http.client, nothing more.

Imported on a trial's first report only. Transient failures (connection errors, 5xx, 408,
429) are retried a few times with a short back-off; anything else fails at once, naming the
blob and the status, never the SAS signature.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import quote

__all__ = ["RETRY_DELAYS", "BlobWriter"]

#: Seconds to wait before each retry; its length is the number of retries.
RETRY_DELAYS = (0.1, 0.3, 0.7, 1.5, 3.0)

_HEADERS = {
    "x-ms-blob-type": "BlockBlob",
    "x-ms-version": "2021-08-06",
    "Content-Type": "application/json",
}
_TRANSIENT_STATUS = frozenset({408, 429})
_TIMEOUT = 30.0


class _Transient(Exception):
    pass


class BlobWriter:
    """PUTs blobs into the container ``container_url`` (``http(s)://host/account/container?<sas>``)."""

    def __init__(self, container_url: str, *, retry_delays: tuple[float, ...] | None = None) -> None:
        scheme, sep, rest = container_url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError("TUNEBUS_METRICS_URL must be an http(s):// container URL")
        host, _, path_query = rest.partition("/")
        path, _, self._query = path_query.partition("?")
        if not host or not path.strip("/"):
            raise ValueError("TUNEBUS_METRICS_URL must name a host and a container")
        self._https = scheme == "https"
        self._host = host
        self._container_path = "/" + path.strip("/")
        self._retry_delays = RETRY_DELAYS if retry_delays is None else retry_delays
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, timeout=_TIMEOUT)
            else:
                self._conn = http.client.HTTPConnection(self._host, timeout=_TIMEOUT)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def put(self, blob_name: str, body: bytes) -> None:
        """Write ``body`` as block blob ``blob_name`` (overwriting); raises on failure."""
        target = f"{self._container_path}/{quote(blob_name, safe='/')}"
        if self._query:
            target += "?" + self._query
        last = ""
        for attempt in range(len(self._retry_delays) + 1):
            if attempt:
                time.sleep(self._retry_delays[attempt - 1])
            try:
                self._put_once(target, blob_name, body)
                return
            except _Transient as exc:
                last = str(exc)
        raise _report_error(
            f"could not write metric blob {blob_name} after {len(self._retry_delays) + 1} attempts: {last}"
        )

    def _put_once(self, target: str, blob_name: str, body: bytes) -> None:
        try:
            conn = self._connection()
            conn.request("PUT", target, body=body, headers={**_HEADERS, "Content-Length": str(len(body))})
            response = conn.getresponse()
            detail = response.read(2048)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        status = response.status
        if 200 <= status < 300:
            if response.will_close:
                self._drop_connection()
            return
        self._drop_connection()
        code = response.getheader("x-ms-error-code") or ""
        what = f"HTTP {status} {response.reason}" + (f" ({code})" if code else "")
        if status >= 500 or status in _TRANSIENT_STATUS:
            raise _Transient(what)
        hint = ""
        if status == 403:
            hint = "; the SAS in TUNEBUS_METRICS_URL may have expired or lack write permission"
        # Azure names the problem in x-ms-error-code; the body repeats it as XML. Other servers
        # (proxies) may only explain themselves in the body.
        body_text = "" if code else " ".join(detail.decode("utf-8", "replace").split())[:300]
        raise _report_error(
            f"metric blob {blob_name} was refused: {what}{hint}" + (f": {body_text}" if body_text else "")
        )


def _report_error(message: str) -> Exception:
    from . import MetricReportError

    return MetricReportError(message)
