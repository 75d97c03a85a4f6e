"""The Blob service's REST protocol, on the standard library alone: accounts from connection
strings, Shared Key signing, URL paths, error and listing replies.

Shared by the CLI's synchronous :class:`shared.blob_rest.BlobRestClient` and the services'
async :class:`shared.storage.BlobStore`. Costly imports (``hmac``, ``xml.etree``) wait for
their first use: the CLI and trials import this on their start-up path
(benchmarks/README_startup.md).
"""

from __future__ import annotations

import binascii
import time
from urllib.parse import quote, unquote

# Not ``typing.TYPE_CHECKING``: importing typing would cost a large part of this module's budget.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "API_VERSION",
    "BlobRestError",
    "StorageAccount",
    "blob_url_path",
    "canonicalized_resource",
    "error_message",
    "parse_connection_string",
    "parse_listing",
    "sign_request",
    "string_to_sign",
]

#: The Blob service REST version every request asks for (``x-ms-version``).
API_VERSION = "2021-08-06"

# Azurite's and the legacy emulator's documented development account (public, not a secret).
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_DEV_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"

# The standard headers of the string to sign, in their documented order.
_SIGNED_HEADERS = ("content-encoding", "content-language", "content-length", "content-md5", "content-type",
                   "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BlobRestError(Exception):
    """The Blob service refused or failed a request.

    ``str()`` names the operation, the blob (or container), the HTTP status and Azure's error
    code; it never contains the account key or the signature.
    """

    def __init__(self, operation: str, target: str, status: int, code: str | None, message: str,
                 blob: str | None = None) -> None:
        self.operation = operation
        """The REST operation, e.g. ``Put Blob``."""
        self.target = target
        """What it was applied to, as the message says it: ``'a/b.json' in container 'tunebus'``."""
        self.blob = blob
        """The blob's name; None for container operations and listings."""
        self.status = status
        """The HTTP status code."""
        self.code = code
        """Azure's error code (``x-ms-error-code``), e.g. ``AuthenticationFailed``; None if absent."""
        self.message = message
        """The first line of the service's message."""
        super().__init__(f"{operation} {target}: HTTP {status} {code or '-'}: {message}")


# ---------------------------------------------------------------- connection strings


def parse_connection_string(conn: str) -> dict[str, str]:
    """Split an Azure Storage connection string into its fields."""
    parts = (p.split("=", 1) for p in conn.split(";") if "=" in p)
    return {k.strip(): v.strip() for k, v in parts}


class StorageAccount:
    """A storage account's blob endpoint and Shared Key credentials."""

    __slots__ = ("endpoint", "key", "name")

    def __init__(self, name: str, endpoint: str, key: bytes) -> None:
        self.name = name
        """The account name, as signed into every request."""
        self.endpoint = endpoint.rstrip("/")
        """The blob service URL without a trailing slash, e.g. ``https://acc.blob.core.windows.net``."""
        self.key = key
        """The decoded account key."""

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        return f"StorageAccount(name={self.name!r}, endpoint={self.endpoint!r})"

    @classmethod
    def from_connection_string(cls, conn: str) -> StorageAccount:
        """The account of a connection string: ``BlobEndpoint`` if given, else built from
        ``DefaultEndpointsProtocol``, ``AccountName`` and ``EndpointSuffix``;
        ``UseDevelopmentStorage=true`` means Azurite's development account on port 10000."""
        fields = parse_connection_string(conn)
        if fields.get("UseDevelopmentStorage", "").lower() == "true":
            fields = {"AccountName": _DEV_ACCOUNT, "AccountKey": _DEV_KEY, "BlobEndpoint": _DEV_ENDPOINT}
        missing = [f for f in ("AccountName", "AccountKey") if not fields.get(f)]
        if missing:
            raise ValueError(f"the storage connection string has no {' or '.join(missing)} "
                             "(Shared Key authorization needs both)")
        name = fields["AccountName"]
        try:
            key = binascii.a2b_base64(fields["AccountKey"], strict_mode=True)
        except binascii.Error:
            raise ValueError("the storage connection string's AccountKey is not valid base64") from None
        if fields.get("BlobEndpoint"):
            endpoint = fields["BlobEndpoint"].rstrip("/")
        else:
            protocol = fields.get("DefaultEndpointsProtocol", "https")
            endpoint = f"{protocol}://{name}.blob.{fields.get('EndpointSuffix', 'core.windows.net')}"
        return cls(name=name, endpoint=endpoint, key=key)


# ---------------------------------------------------------------- signing (pure)


def canonicalized_resource(account: str, path: str, query: Mapping[str, str]) -> str:
    """``/<account><encoded URL path>`` then ``\\nname:value`` per query parameter.

    Names are lower-cased and sorted; values are the decoded ones. For path-style URLs the
    path already starts with ``/<account>``, which is why the account appears twice there.
    """
    lines = [f"/{account}{path or '/'}"]
    lines += [f"{name}:{query[key]}" for name, key in sorted((k.lower(), k) for k in query)]
    return "\n".join(lines)


def string_to_sign(method: str, headers: Mapping[str, str], resource: str) -> str:
    """The Blob service's Shared Key string to sign; ``headers`` has lower-case names.

    ``Content-Length`` of zero signs as empty (versions 2015-02-21 and later); the ``x-ms-``
    headers follow sorted, each as ``name:value`` with its whitespace folded.
    """
    standard = [headers.get(name, "") for name in _SIGNED_HEADERS]
    if standard[2] == "0":
        standard[2] = ""
    ms_headers = sorted((k, " ".join(v.split())) for k, v in headers.items() if k.startswith("x-ms-"))
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in ms_headers)
    return "\n".join([method.upper(), *standard]) + "\n" + canonical_headers + resource


def _sign(key: bytes, text: str) -> str:
    """Base64 of the HMAC-SHA256 of ``text`` under ``key``."""
    import hmac

    digest = hmac.digest(key, text.encode("utf-8"), "sha256")
    return binascii.b2a_base64(digest, newline=False).decode("ascii")


def sign_request(account: StorageAccount, method: str, headers: Mapping[str, str], body_length: int,
                 resource: str) -> dict[str, str]:
    """``headers`` (lower-case names) plus the date, version, length and Shared Key authorization."""
    signed = {"x-ms-date": _http_date(time.time()), "x-ms-version": API_VERSION,
              "user-agent": "tunebus-blob-rest", **headers}
    if method in ("PUT", "POST") or body_length:
        signed["content-length"] = str(body_length)
    signature = _sign(account.key, string_to_sign(method, signed, resource))
    signed["authorization"] = f"SharedKey {account.name}:{signature}"
    return signed


def blob_url_path(base_path: str, container: str, name: str) -> str:
    """The encoded URL path of a blob (or of the container when ``name`` is empty), as the SDK
    encodes it; the same string is sent and signed. ``base_path`` is the endpoint's own path
    ('' for Azure, ``/devstoreaccount1`` for Azurite)."""
    return f"{base_path}/{quote(container, safe='')}" + (f"/{quote(name, safe='/~')}" if name else "")


def _http_date(seconds: float) -> str:
    """RFC 1123 date in English whatever the locale (``time.strftime`` would follow it)."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


# ---------------------------------------------------------------- XML replies


def parse_listing(body: bytes) -> tuple[list[str], str]:
    """Blob and prefix names of one List Blobs page, and its NextMarker ('' on the last page)."""
    from xml.etree import ElementTree

    root = ElementTree.fromstring(body)
    names = []
    for item in root.iterfind("Blobs/*"):
        if item.tag in ("Blob", "BlobPrefix"):
            element = item.find("Name")
            if element is not None and element.text is not None:
                # Names with characters XML cannot carry come percent-encoded.
                encoded = element.get("Encoded", "").lower() == "true"
                names.append(unquote(element.text) if encoded else element.text)
    return names, (root.findtext("NextMarker") or "").strip()


def error_message(body: bytes) -> str:
    """The first line of an error reply's ``<Message>``, or '' when there is none."""
    if not body.lstrip().startswith(b"<"):
        return ""
    from xml.etree import ElementTree

    try:
        text = ElementTree.fromstring(body).findtext("Message") or ""
    except ElementTree.ParseError:
        return ""
    return text.strip().splitlines()[0] if text.strip() else ""
