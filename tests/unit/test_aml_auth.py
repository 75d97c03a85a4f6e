"""The AML credential chain: never prompts, bounded in time, says what to do when nothing works."""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from services.aml_submitter.aml.auth import AuthMethod, NoCredentialError, resolve_auth
from services.aml_submitter.backend import PermanentSubmitError

pytest.importorskip("azureml.core", reason="azureml-core (the aml extra) is not installed")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nothing_configured_names_all_three_and_how_to_fix(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Any) -> None:
    # No service principal variables, a managed-identity endpoint that refuses (loopback, closed
    # port: nothing leaves this machine), and no az CLI on PATH.
    monkeypatch.setenv("MSI_ENDPOINT", f"http://127.0.0.1:{_closed_port()}/msi/token")
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "IDENTITY_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    env = {"PATH": str(tmp_path)}  # an empty folder: no `az`
    with pytest.raises(NoCredentialError) as caught:
        resolve_auth(env, timeout=15)
    message = str(caught.value)
    assert isinstance(caught.value, PermanentSubmitError)
    assert "service principal" in message
    assert "AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET are not set" in message
    assert "managed identity" in message and "MSI" in message
    assert "Azure CLI" in message and "az CLI is not on PATH" in message
    assert "az login" in message and "AZURE_CLIENT_SECRET" in message  # how to fix
    assert [a.method.split(" ")[0] for a in caught.value.attempts] == ["service", "managed", "Azure"]


def test_a_partial_service_principal_names_what_is_missing() -> None:
    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"}
    fail = AuthMethod("other", lambda e: (_ for _ in ()).throw(RuntimeError("no")))
    from services.aml_submitter.aml.auth import default_methods

    with pytest.raises(NoCredentialError, match="AZURE_CLIENT_SECRET not set"):
        resolve_auth(env, methods=[default_methods()[0], fail])


def test_the_first_method_that_works_wins_and_later_ones_are_not_tried() -> None:
    tried: list[str] = []

    def method(name: str, ok: bool) -> AuthMethod:
        def make(env: Mapping[str, str]) -> Any:
            tried.append(name)
            if not ok:
                raise RuntimeError(f"{name} failed")
            return f"auth-{name}"
        return AuthMethod(name, make)

    auth, name, _ = resolve_auth({}, methods=[method("a", False), method("b", True), method("c", True)])
    assert (auth, name) == ("auth-b", "b")
    assert tried == ["a", "b"]


def test_a_hanging_method_is_abandoned_after_the_timeout() -> None:
    release = threading.Event()

    def hangs(env: Mapping[str, str]) -> Any:
        release.wait(60)

    try:
        with pytest.raises(NoCredentialError, match=r"slow: no token within 0\.5 s"):
            resolve_auth({}, timeout=0.5, methods=[AuthMethod("slow", hangs)])
        # It gave up while the method still hung: the method returns only once released.
        assert not release.is_set()
    finally:
        release.set()


def test_secrets_are_not_in_the_message() -> None:
    def leaky(env: Mapping[str, str]) -> Any:
        raise RuntimeError("AADSTS7000215: Invalid client secret provided.")

    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s3cr3t-value"}
    with pytest.raises(NoCredentialError) as caught:
        resolve_auth(env, methods=[AuthMethod("sp", leaky)])
    assert "s3cr3t-value" not in str(caught.value)
    assert "Invalid client secret" in str(caught.value)


def test_a_credential_with_a_token_but_no_access_is_passed_over() -> None:
    """A managed identity without a role yields a token; the workspace refuses it (403): next."""

    class Forbidden(Exception):
        status_code = 403

    def probe(auth: Any) -> str:
        if auth == "auth-msi":
            raise Forbidden("AuthorizationFailed: identity has no access to workspace ws")
        return f"workspace via {auth}"

    methods = [AuthMethod("managed identity", lambda env: "auth-msi"),
               AuthMethod("Azure CLI login", lambda env: "auth-cli")]
    auth, name, workspace = resolve_auth({}, methods=methods, probe=probe)
    assert (auth, name, workspace) == ("auth-cli", "Azure CLI login", "workspace via auth-cli")
    with pytest.raises(NoCredentialError) as caught:
        resolve_auth({}, methods=methods[:1], probe=probe)
    assert "managed identity: a token, but the workspace refused it" in str(caught.value)
    assert "AuthorizationFailed" in str(caught.value)


def test_cli_tokens_are_kept_until_shortly_before_they_expire(tmp_path: Any) -> None:
    from services.aml_submitter.aml.auth import TOKEN_REFRESH_MARGIN, _az_token_getter

    calls = tmp_path / "calls"
    az = tmp_path / "az"
    az.write_text(f"""#!/bin/sh
echo x >> {calls}
n=$(wc -l < {calls})
echo '{{"accessToken": "token-'$n'", "expires_on": 10000}}'
""")
    az.chmod(0o755)
    now = [1000.0]
    get = _az_token_getter(str(az), 10, clock=lambda: now[0])
    assert get("https://management.azure.com/") == "token-1"
    assert get("https://management.azure.com/") == "token-1"  # cached, no second process
    now[0] = 10000 - TOKEN_REFRESH_MARGIN + 1  # about to expire
    assert get("https://management.azure.com/") == "token-2"
    assert calls.read_text().count("x") == 2
