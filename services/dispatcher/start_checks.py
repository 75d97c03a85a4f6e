"""What an ``experiment.start`` must pass before its experiment exists: a valid config, its custom
algorithms' stored code, its secrets kept apart; and the ERROR state a rejected start leaves."""

from __future__ import annotations

import logging
from typing import Any

from shared.bus import Bus, PermanentError
from shared.config import ExperimentConfig, parse_experiment_config
from shared.errors import ConfigError
from shared.messages import ExperimentStart, ExperimentStatus, ExperimentStatusChanged
from shared.results import read_secrets
from shared.state import ExperimentState
from shared.storage import BlobStore, ConcurrentWriteError, Layout

from . import lifecycle

__all__ = ["check_algorithm_code", "keep_secrets", "record_rejected", "validate_start_config"]

log = logging.getLogger("tunebus.dispatcher")


def validate_start_config(config: dict[str, Any]) -> ExperimentConfig:
    """The start message's config validated (secrets included); PermanentError names the fields."""
    try:
        return parse_experiment_config(config)
    except ConfigError as exc:
        raise PermanentError(str(exc)) from exc


def check_algorithm_code(msg: ExperimentStart, config: ExperimentConfig) -> dict[str, str]:
    """The start's stored custom-algorithm archives, one per custom (className) tuner or assessor,
    each at its place in the experiment's folder; PermanentError names what is wrong."""
    layout = Layout(msg.experiment_id)
    custom = [role for role in ("tuner", "assessor")
              if getattr(config, role) is not None and getattr(config, role).class_name]
    for role in custom:
        expected = layout.algorithm_code_archive(role)
        if msg.algorithm_code.get(role) != expected:
            raise PermanentError(
                f"{role}: a custom {role} (className) needs its code stored at {expected} and named in the "
                f"start message's algorithm_code.{role} (tunebus create does both); got "
                f"{msg.algorithm_code.get(role)!r}")
    extra = sorted(set(msg.algorithm_code) - set(custom))
    if extra:
        raise PermanentError(f"algorithm_code names code for {', '.join(extra)}, which the config does not "
                             f"give as a custom className")
    return {role: layout.algorithm_code_archive(role) for role in custom}


async def keep_secrets(store: BlobStore, experiment_id: str, config: ExperimentConfig) -> None:
    """Move secrets published in the start message to ``secrets.json``; check one is there.

    ``tunebus create`` writes ``secrets.json`` itself and publishes no secret. A program
    may publish the key in the message's config (discouraged: it then sits in the queue
    until handled); it is stored apart here and left out of ``experiment.json``. An AzureBlob
    sharedStorage needs its key (to sign the trials' SAS): a start without one is rejected.
    """
    secrets = config.secrets()
    path = Layout(experiment_id).secrets_doc
    if not secrets.empty:
        log.warning("experiment %s: the start message carries a storage account key; it is kept in "
                    "%s, not in experiment.json (publishing keys is discouraged)", experiment_id, path)
        try:
            await store.write_json(path, secrets.to_document(), create_only=True)
        except ConcurrentWriteError:
            pass  # written before (by the CLI, or before a redelivery): the first one stands
        return
    if config.shared_storage is None:
        return
    stored = await read_secrets(store, experiment_id)
    if stored.shared_storage_account_key is None:
        raise PermanentError(
            "sharedStorage.storageAccountKey: required (the trials' results SAS URLs of the "
            "sharedStorage container are signed with it); give it in the experiment file")


async def record_rejected(store: BlobStore, bus: Bus, msg: ExperimentStart, reason: str) -> None:
    """Leave a readable ERROR state for a start that cannot run (it is dead-lettered too)."""
    now = lifecycle.utcnow()
    state = ExperimentState(experiment_id=msg.experiment_id, started_at=now, ended_at=now,
                            status=ExperimentStatus.ERROR, reason=reason)
    try:
        await store.write_json(Layout(msg.experiment_id).state_doc, state.model_dump(mode="json"),
                               create_only=True)
    except ConcurrentWriteError:
        return
    await bus.publish(ExperimentStatusChanged(experiment_id=msg.experiment_id,
                                              status=ExperimentStatus.ERROR, reason=reason))
