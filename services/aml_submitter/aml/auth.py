"""Finding a credential for the AML workspace without ever prompting anybody.

The submitter is a service: nobody is there to type a device code. It tries, in order:

1. a **service principal** from ``AZURE_TENANT_ID`` / ``AZURE_CLIENT_ID`` / ``AZURE_CLIENT_SECRET``
   (``ServicePrincipalAuthentication``);
2. a **managed identity** of the machine it runs on (``MsiAuthentication``; a user-assigned one
   when ``AZURE_CLIENT_ID`` is set without a secret);
3. the **Azure CLI** login of the user it runs as (``AzureCliAuthentication`` where azure-cli is
   installed beside azureml-core, else the ``az`` executable's ``az account get-access-token``).

Each is tried by actually getting a token *and then* by the caller's ``probe`` (the backend
loads the workspace with it), within a time limit (the managed-identity endpoint retries for
minutes when there is none): a credential that yields a token but has no role on the
workspace (a managed identity nobody granted access) is passed over for the next one, with
the workspace's answer as its reason. ``InteractiveLoginAuthentication`` — azureml-core's
default when no ``auth`` is given — is never used. When none works, the error lists what was
tried, why each failed and how to fix it. The backend drops the credential it uses at the
first authentication error (401/403) and goes through the chain again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..backend import PermanentSubmitError

__all__ = [
    "DEFAULT_AUTH_TIMEOUT",
    "DEFAULT_CLOUD",
    "HOW_TO_FIX",
    "AuthAttempt",
    "AuthMethod",
    "NoCredentialError",
    "default_methods",
    "resolve_auth",
]

#: The Azure cloud unless ``AZUREML_CURRENT_CLOUD`` names another (AzureChinaCloud, AzureUSGovernment).
DEFAULT_CLOUD = "AzureCloud"
#: Seconds one method may take to produce a token.
DEFAULT_AUTH_TIMEOUT = 20.0
_REASON_CHARS = 400

HOW_TO_FIX = (
    "How to fix, any one of: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET in the "
    "submitter's environment for a service principal with access to the workspace (e.g. the "
    "Contributor or AzureML Data Scientist role); or run the submitter on Azure compute whose managed "
    "identity has that access (set AZURE_CLIENT_ID to pick a user-assigned identity); or run "
    "`az login` as the user the submitter runs as (and `az account set --subscription <id>`)."
)


class NoCredentialError(PermanentSubmitError):
    """No credential method worked; the message says what was tried and how to fix it."""

    def __init__(self, attempts: list[AuthAttempt]) -> None:
        self.attempts = attempts
        lines = [f"  {i}. {a.method}: {a.reason}" for i, a in enumerate(attempts, 1)]
        super().__init__("no Azure credential works for the AML workspace. Tried:\n"
                         + "\n".join(lines) + "\n" + HOW_TO_FIX)


@dataclass(frozen=True)
class AuthAttempt:
    """One method tried and why it did not work."""

    method: str
    reason: str


@dataclass(frozen=True)
class AuthMethod:
    """A way to authenticate: ``make(env)`` returns an azureml auth object that has a token.

    ``make`` raises (any exception) with the reason when the method does not work here.
    """

    name: str
    make: Callable[[Mapping[str, str]], Any]


class _Unavailable(Exception):
    """The method cannot even be tried here (its settings are absent)."""


# ---------------------------------------------------------------- the three methods


def _cloud(env: Mapping[str, str]) -> str:
    # Naming the cloud keeps azureml-core from downloading cloud metadata from ARM first.
    return env.get("AZUREML_CURRENT_CLOUD") or DEFAULT_CLOUD


def _verified(auth: Any) -> Any:
    # Getting the header makes the object fetch a token: that is what "it works" means.
    auth.get_authentication_header()
    return auth


def _service_principal(env: Mapping[str, str]) -> Any:
    names = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
    missing = [n for n in names if not env.get(n)]
    if len(missing) == len(names):
        raise _Unavailable(f"{', '.join(names)} are not set")
    if missing:
        raise _Unavailable(f"{', '.join(missing)} not set (the other service-principal variables are)")
    from azureml.core.authentication import ServicePrincipalAuthentication

    return _verified(ServicePrincipalAuthentication(
        tenant_id=env["AZURE_TENANT_ID"], service_principal_id=env["AZURE_CLIENT_ID"],
        service_principal_password=env["AZURE_CLIENT_SECRET"], cloud=_cloud(env),
    ))


def _managed_identity(env: Mapping[str, str]) -> Any:
    from azureml.core.authentication import MsiAuthentication

    client_id = env.get("AZURE_CLIENT_ID") if not env.get("AZURE_CLIENT_SECRET") else None
    config = {"client_id": client_id} if client_id else None
    return _verified(MsiAuthentication(cloud=_cloud(env), identity_config=config))


#: A cached CLI token is fetched again this long before it expires.
TOKEN_REFRESH_MARGIN = 300.0


def _az_token_getter(az: str, timeout: float,
                     clock: Callable[[], float] = time.time) -> Callable[[str], str]:
    """``get_token_for_audience`` for ``TokenAuthentication``: ``az account get-access-token``.

    azureml-core calls it for every request; each call is a process start (about a second),
    so a token is kept until ``TOKEN_REFRESH_MARGIN`` before its ``expires_on``, then fetched anew.
    """
    cache: dict[str, tuple[str, float]] = {}
    lock = threading.Lock()

    def get_token_for_audience(resource: str) -> str:
        with lock:
            cached = cache.get(resource)
            if cached is not None and clock() < cached[1] - TOKEN_REFRESH_MARGIN:
                return cached[0]
        result = subprocess.run(
            [az, "account", "get-access-token", "--resource", resource, "--output", "json"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError((result.stderr or result.stdout).strip() or f"az exited {result.returncode}")
        answer = json.loads(result.stdout)
        token = str(answer["accessToken"])
        expires = answer.get("expires_on")  # epoch seconds (az >= 2.54); absent: do not cache
        if expires is not None:
            with lock:
                cache[resource] = (token, float(expires))
        return token

    return get_token_for_audience


def _azure_cli(env: Mapping[str, str]) -> Any:
    try:
        import azure.cli.core  # noqa: F401  (azure-cli installed beside azureml-core)
    except ImportError:
        az = shutil.which("az", path=env.get("PATH"))
        if az is None:
            raise _Unavailable("the az CLI is not on PATH (and azure-cli is not installed here)") from None
        from azureml.core.authentication import TokenAuthentication

        return _verified(TokenAuthentication(_az_token_getter(az, DEFAULT_AUTH_TIMEOUT), cloud=_cloud(env)))
    from azureml.core.authentication import AzureCliAuthentication

    return _verified(AzureCliAuthentication(cloud=_cloud(env)))


def default_methods() -> list[AuthMethod]:
    """Service principal, managed identity, Azure CLI: in that order."""
    return [
        AuthMethod("service principal (AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET)",
                   _service_principal),
        AuthMethod("managed identity", _managed_identity),
        AuthMethod("Azure CLI login (az login)", _azure_cli),
    ]


# ---------------------------------------------------------------- the chain


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, _Unavailable | TimeoutError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _within(timeout: float, make: Callable[[Mapping[str, str]], Any], env: Mapping[str, str]) -> Any:
    """Run ``make(env)`` in a daemon thread; give up on it after ``timeout`` seconds.

    A method stuck in a network call cannot be interrupted; its thread is left to end alone.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["auth"] = make(env)
        except BaseException as exc:  # reported to the caller, whatever it is
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="tunebus-aml-auth", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no token within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["auth"]


def _no_probe(auth: Any) -> None:
    return None


def _probe_with(probe: Callable[[Any], Any], auth: Any, env: Mapping[str, str]) -> Any:
    return probe(auth)


def resolve_auth(env: Mapping[str, str], *, timeout: float = DEFAULT_AUTH_TIMEOUT,
                 methods: list[AuthMethod] | None = None,
                 probe: Callable[[Any], Any] = _no_probe) -> tuple[Any, str, Any]:
    """The first credential that works: (credential, the method's name, what ``probe`` returned).

    "Works" means it yields a token and ``probe(credential)`` (e.g. loading the workspace)
    returns; :class:`NoCredentialError` naming every method's cause if none does.
    Blocking (it may wait up to ``timeout`` per method and probe): call it from a worker thread.
    """
    attempts: list[AuthAttempt] = []
    for method in methods if methods is not None else default_methods():
        try:
            auth = _within(timeout, method.make, env)
        except Exception as exc:
            attempts.append(AuthAttempt(method.name, _reason(exc)))
            continue
        try:
            return auth, method.name, _within(timeout, partial(_probe_with, probe, auth), env)
        except Exception as exc:
            reason = "a token, but the workspace refused it: " + _reason(exc)
            attempts.append(AuthAttempt(method.name, reason))
    raise NoCredentialError(attempts)
