"""Where a trial's metrics go: the deployment's container, or the experiment's sharedStorage.

An experiment whose config has ``sharedStorage: {storageType: AzureBlob, ...}`` has its
trials' results written to *that* account and container, at the same paths as in the
deployment's container (``experiments/<exp>/trials/<trial>/results.jsonl``, see
:meth:`shared.storage.Layout.results_blob`); without one they go to the deployment's container.

* The submitter creates each attempt's results blob there and gives the trial (local and aml)
  the URL of that one blob with an append-only, expiring SAS (:func:`shared_storage_results_url`),
  signed with the account key.
* The metric ingestor reads the results there (:meth:`SharedStorageAccount.open_store`).
* Everything else stays in the deployment's container: ``experiment.json``, ``secrets.json``,
  the state document, trial documents, claims, the trials' logs and ``ended.json`` markers.

The account key comes from ``experiments/<exp>/secrets.json`` in the deployment's container
(:func:`read_secrets`), never from a message. The account is reached at
``https://<account>.blob.core.windows.net`` unless the deployment's
``TUNEBUS_SHARED_STORAGE_ENDPOINT`` template says otherwise (``{account}`` stands for the name:
``http://127.0.0.1:10000/{account}`` for Azurite, or a sovereign cloud's endpoint). The
container must exist: tunebus does not create containers in the user's account.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from shared.config import ExperimentSecrets
from shared.secrets_mask import SECRET_MASK
from shared.settings import DEFAULT_SHARED_STORAGE_ENDPOINT
from shared.storage import BlobStore, Layout, account_connection_string, results_sas_token

__all__ = [
    "SharedStorageAccount",
    "SharedStorageError",
    "read_secrets",
    "results_account",
    "shared_storage_account",
    "shared_storage_endpoint",
    "shared_storage_results_url",
    "shared_storage_section",
]


class SharedStorageError(ValueError):
    """The experiment's sharedStorage cannot be used: no account key to sign or read with."""


@dataclass(frozen=True)
class SharedStorageAccount:
    """An experiment's AzureBlob sharedStorage: the account and container its metrics go to."""

    name: str
    container: str
    endpoint: str
    key: str = field(repr=False)  # never in a log line or a traceback

    @property
    def container_url(self) -> str:
        """The container's URL, without any credential."""
        return f"{self.endpoint}/{self.container}"

    def open_store(self) -> BlobStore:
        """A store on the container, with the account key; the caller closes it."""
        return BlobStore(account_connection_string(self.name, self.key, self.endpoint), self.container)


def shared_storage_endpoint(account: str, template: str = DEFAULT_SHARED_STORAGE_ENDPOINT) -> str:
    """The blob endpoint of ``account``: ``template`` with ``{account}`` replaced by the name."""
    return template.replace("{account}", account).rstrip("/")


def shared_storage_section(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The wire-form config's AzureBlob ``sharedStorage`` section, or None when it has none."""
    section = config.get("sharedStorage")
    if not isinstance(section, Mapping) or str(section.get("storageType", "")).lower() != "azureblob":
        return None
    return section


def shared_storage_account(config: Mapping[str, Any], secrets: ExperimentSecrets, *,
                           endpoint_template: str = DEFAULT_SHARED_STORAGE_ENDPOINT,
                           ) -> SharedStorageAccount | None:
    """Where the experiment's metrics go; None means the deployment's own container.

    ``config`` is the wire form (camelCase, as in ``experiment.json``); ``secrets`` holds the
    account key. Raises :class:`SharedStorageError` when there is a sharedStorage but no key.
    """
    section = shared_storage_section(config)
    if section is None:
        return None
    account = str(section.get("storageAccountName") or "")
    container = str(section.get("containerName") or "")
    if not account or not container:
        raise SharedStorageError("sharedStorage needs storageAccountName and containerName")
    key = secrets.shared_storage_account_key
    if key is None:
        raise SharedStorageError(
            f"sharedStorage account {account!r} has no storageAccountKey: tunebus signs the trials' "
            "results SAS URLs with it (give it in the experiment file)")
    return SharedStorageAccount(account, container, shared_storage_endpoint(account, endpoint_template),
                                key.get_secret_value())


def shared_storage_results_url(account: SharedStorageAccount, blob: str, lifetime: timedelta, *,
                               now: datetime | None = None) -> str:
    """The URL of ``blob`` in the account's container with a SAS that may only append to it.

    The same rules as :meth:`shared.storage.BlobStore.results_sas_url`: one blob, append only,
    expiring after ``lifetime``; the key signs and never leaves this process, only the token does.
    """
    token = results_sas_token(account.name, account.container, blob, account.key, lifetime, now=now)
    return f"{account.container_url}/{quote(blob, safe='/~')}?{token}"


async def read_secrets(store: BlobStore, experiment_id: str,
                       config: Mapping[str, Any] | None = None) -> ExperimentSecrets:
    """The experiment's secrets, from ``secrets.json`` in the deployment's container ``store``.

    An experiment started before keys left the wire form has none; its ``experiment.json``
    ``config`` (given here) still carries the key, which is used then.
    """
    found = await store.read_json(Layout(experiment_id).secrets_doc)
    if found is not None:
        return ExperimentSecrets.from_document(found[0])
    section = shared_storage_section(config or {})
    legacy = None if section is None else section.get("storageAccountKey")
    if isinstance(legacy, str) and legacy and legacy != SECRET_MASK:
        return ExperimentSecrets.model_validate({"sharedStorageAccountKey": legacy})
    return ExperimentSecrets()


async def results_account(store: BlobStore, experiment_id: str, config: Mapping[str, Any], *,
                          endpoint_template: str = DEFAULT_SHARED_STORAGE_ENDPOINT,
                          ) -> SharedStorageAccount | None:
    """:func:`shared_storage_account` with the secrets read from the deployment's ``store``."""
    if shared_storage_section(config) is None:
        return None  # no secret to read
    secrets = await read_secrets(store, experiment_id, config)
    return shared_storage_account(config, secrets, endpoint_template=endpoint_template)
