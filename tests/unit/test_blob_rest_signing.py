"""The stdlib blob client without a server: connection strings, the Shared Key string to sign, limits.

Signatures are checked for real against Azurite in tests/integration/test_blob_rest.py; here
the string to sign is compared with the worked example of Azure's "Authorize with Shared Key".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shared import blob_protocol, blob_rest
from shared.blob_protocol import canonicalized_resource, string_to_sign
from shared.blob_rest import BlobRestClient, BlobRestError, StorageAccount

KEY = "a2V5LWJ5dGVzLWZvci10ZXN0cw=="  # base64 of b"key-bytes-for-tests"


def test_string_to_sign_matches_the_documented_example() -> None:
    # Azure docs, "Authorize with Shared Key": Get Container Metadata, version 2015-02-21.
    resource = canonicalized_resource("myaccount", "/mycontainer",
                                      {"restype": "container", "comp": "metadata", "timeout": "20"})
    headers = {"x-ms-date": "Fri, 26 Jun 2015 23:39:12 GMT", "x-ms-version": "2015-02-21"}
    assert string_to_sign("GET", headers, resource) == (
        "GET\n\n\n\n\n\n\n\n\n\n\n\n"
        "x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-version:2015-02-21\n"
        "/myaccount/mycontainer\ncomp:metadata\nrestype:container\ntimeout:20"
    )


def test_string_to_sign_orders_standard_headers_and_blanks_a_zero_length() -> None:
    headers = {"content-type": "application/gzip", "content-length": "0", "x-ms-version": "v",
               "x-ms-blob-type": "BlockBlob", "x-ms-date": "D", "if-match": '"etag"',
               "x-ms-meta-a": " x   y "}
    text = string_to_sign("put", headers, "/acc/c/b")
    assert text == ("PUT\n\n\n\n\napplication/gzip\n\n\n\"etag\"\n\n\n\n"
                    "x-ms-blob-type:BlockBlob\nx-ms-date:D\nx-ms-meta-a:x y\nx-ms-version:v\n/acc/c/b")


def test_path_style_resource_names_the_account_twice_and_sorts_lowercased_query() -> None:
    resource = canonicalized_resource("devstoreaccount1", "/devstoreaccount1/c/a%20b",
                                      {"Prefix": "x y", "comp": "list"})
    assert resource == "/devstoreaccount1/devstoreaccount1/c/a%20b\ncomp:list\nprefix:x y"


@pytest.mark.parametrize(("conn", "endpoint"), [
    (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
     "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;", "http://127.0.0.1:10000/devstoreaccount1"),
    (f"DefaultEndpointsProtocol=https;AccountName=acc;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn",
     "https://acc.blob.core.chinacloudapi.cn"),
    (f"AccountName=acc;AccountKey={KEY}", "https://acc.blob.core.windows.net"),
    ("UseDevelopmentStorage=true", "http://127.0.0.1:10000/devstoreaccount1"),
])
def test_endpoint_from_connection_string(conn: str, endpoint: str) -> None:
    account = StorageAccount.from_connection_string(conn)
    assert account.endpoint == endpoint
    assert KEY not in repr(account) and "AccountKey" not in repr(BlobRestClient(account, "c"))


@pytest.mark.parametrize(("conn", "problem"), [
    ("AccountName=acc;SharedAccessSignature=sv=x", "no AccountKey"),
    (f"AccountKey={KEY}", "no AccountName"),
    ("AccountName=acc;AccountKey=not base64!", "not valid base64"),
])
def test_unusable_connection_strings_are_refused_without_echoing_them(conn: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        StorageAccount.from_connection_string(conn)
    assert "sv=x" not in str(caught.value) and "base64!" not in str(caught.value)


def test_put_blob_refuses_what_one_request_cannot_carry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blob_rest, "MAX_PUT_BLOB_BYTES", 8)
    client = BlobRestClient.from_connection_string(f"AccountName=acc;AccountKey={KEY}", "c")
    with pytest.raises(ValueError, match=r"'big' is 9 bytes; put_blob sends at most 8 bytes"):
        client.put_blob("big", b"x" * 9)  # refused before any connection is made


def test_error_names_operation_blob_status_and_code() -> None:
    error = BlobRestError("Get Blob", "'a/b' in container 'c'", 403, "AuthenticationFailed",
                          "Server failed to authenticate the request.", blob="a/b")
    assert str(error) == ("Get Blob 'a/b' in container 'c': HTTP 403 AuthenticationFailed: "
                          "Server failed to authenticate the request.")
    assert (error.status, error.code, error.blob) == (403, "AuthenticationFailed", "a/b")


def test_listing_page_parsing_decodes_encoded_names() -> None:
    page = (b'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="c"><Prefix>p/</Prefix>'
            b"<Blobs><Blob><Name>p/a.json</Name><Properties/></Blob>"
            b'<Blob><Name Encoded="true">p/%EF%BF%BFx</Name></Blob>'
            b"<BlobPrefix><Name>p/sub/</Name></BlobPrefix></Blobs>"
            b"<NextMarker>tok</NextMarker></EnumerationResults>")
    assert blob_protocol.parse_listing(page) == (["p/a.json", "p/\uffffx", "p/sub/"], "tok")
    last_page = b"<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>"
    assert blob_protocol.parse_listing(last_page) == ([], "")


def test_import_is_light() -> None:
    code = textwrap.dedent("""
        import sys
        import shared.blob_rest
        print(sorted(m for m in ("http.client", "ssl", "xml.etree", "json", "hashlib", "typing", "azure")
                     if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_connect_fails_fast_when_nothing_listens() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        client = BlobRestClient(StorageAccount("acc", f"http://127.0.0.1:{port}/acc", b"k"), "c")
        with pytest.raises(ConnectionRefusedError):
            client.connect(timeout=5)
        assert client._idle == []
