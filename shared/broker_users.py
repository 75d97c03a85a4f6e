"""Who may do what on the broker: one RabbitMQ user per service, one for the CLI, one for operators.

Details: :class:`BrokerUser`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.topology import (
    AML_KILL_QUEUE,
    AML_WATCH_QUEUE,
    DEAD_LETTER_EXCHANGE,
    DISPATCHER_SHARDS,
    EVENTS_EXCHANGE,
    INGESTOR_QUEUE,
    SUBMIT_QUEUE,
    TUNER_SHARDS,
    event_routing_keys,
)

__all__ = [
    "ADMIN_USER",
    "USERS",
    "BrokerUser",
    "definitions",
    "ensure_password",
    "main",
    "write_for_compose",
]

ADMIN_USER = "tunebus-admin"
_TOPOLOGY = r"^tunebus\..*$"
# The CLI's watch queue: exclusive, named by aio-pika (amq_<hex>) or by the server (amq.gen-*).
_CLI_ENTITIES = r"^(tunebus\..*|amq_[0-9a-f]+|amq\.gen-.*)$"


@dataclass(frozen=True)
class BrokerUser:
    """One broker account: the queues it consumes and the routing keys it publishes and binds.

    Data, like the topology it is derived from (:mod:`shared.topology`). Each user gets:

    * **configure, write and read** on the topology's names (``tunebus.*``) and nothing else:
      every service declares the whole topology at start (idempotently; see
      :meth:`shared.bus.Bus.declare`), and RabbitMQ wants configure to declare, write on a queue
      to bind it, and read on a queue declared with a dead-letter exchange (all of ours). So a
      service account could consume another service's queue: what holds is the next point;
    * **topic permissions** on the events exchange: it may publish only the routing keys it emits,
      and bind only the keys of the topology (plus, for the CLI, its watch queue's).

    Not covered: the delay exchange is a headers exchange, which topic permissions do not reach; a
    ticket parked there comes back on the events exchange with the routing key it was published
    with. Closing that needs a topic delay exchange (a topology change).

    ``guest`` is deleted; the operator's ``tunebus-admin`` (administrator: the management UI,
    ``rabbitmqctl``-like work, the test fixtures) has every right. Passwords are generated per
    deployment and kept in its state, never in the repository: ``python -m shared.broker_users
    DIR`` writes ``DIR/amqp-<user>`` (mode 600, once) and prints RabbitMQ definitions (users,
    permissions, topic permissions) for ``rabbitmqctl import_definitions``.
    """

    name: str
    consumes: tuple[str, ...]  # queue names (documentation: read cannot be narrower, see above)
    publishes: tuple[str, ...]  # routing keys on the events exchange
    binds: tuple[str, ...] = ()  # routing keys it binds a queue of its own to (the CLI's watch)
    entities: str = _TOPOLOGY  # the exchanges and queues it may configure, write and read

    def publish_regex(self) -> str:
        return "^(" + "|".join(re.escape(k) for k in self.publishes) + ")$"


USERS: tuple[BrokerUser, ...] = (
    BrokerUser("tunebus-dispatcher", (f"{DISPATCHER_SHARDS.queue(0).name[:-1]}<k>",),
               ("experiment.status", "suggest.request", "suggest.withdrawn", "trial.submit", "trial.kill",
                "trial.ended",
                # trial.status: a lost job's end, or an end the ingestor never got, sent again
                "trial.status", "ticket.dispatcher.tick")),
    BrokerUser("tunebus-tuner", (f"{TUNER_SHARDS.queue(0).name[:-1]}<k>",),
               ("trial.suggested", "trial.stop_request", "experiment.error")),
    BrokerUser("tunebus-submitter",
               (SUBMIT_QUEUE.name, AML_WATCH_QUEUE.name, AML_KILL_QUEUE.name, "tunebus.submitter.<replica>"),
               ("trial.status", "trial.heartbeat", "ticket.aml.watch")),
    BrokerUser("tunebus-ingestor", (INGESTOR_QUEUE.name,),
               ("trial.metric", "trial.progress", "trial.ended", "ticket.ingest.watch")),
    # The dashboard consumes nothing (it reads storage); its buttons publish the CLI's commands.
    BrokerUser("tunebus-dashboard", (),
               ("experiment.stop", "experiment.resume", "experiment.update", "trial.stop_request")),
    BrokerUser("tunebus-cli", ("amq_<watch>",),
               ("experiment.start", "experiment.stop", "experiment.resume", "experiment.update",
                "trial.stop_request"),
               binds=("experiment.status", "trial.status", "trial.ended", "trial.metric", "trial.progress",
                      "trial.suggested", "trial.submit", "experiment.error"),
               entities=_CLI_ENTITIES),
)


def ensure_password(folder: Path, user: str) -> str:
    """The user's password, generated and written (mode 600) on first use."""
    path = folder / f"amqp-{user}"
    if path.exists():
        return path.read_text().strip()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(folder: Path, vhost: str = "/") -> dict[str, Any]:
    """Users, permissions and topic permissions for ``rabbitmqctl import_definitions``."""
    users: list[dict[str, Any]] = []
    permissions: list[dict[str, Any]] = []
    topics: list[dict[str, Any]] = []
    for user in USERS:
        users.append(_user(user.name, ensure_password(folder, user.name), ""))
        permissions.append({"user": user.name, "vhost": vhost, "configure": user.entities,
                            "write": user.entities, "read": user.entities})
        binds = "^(" + "|".join(re.escape(k) for k in (*user.binds, *_bound_keys(user))) + ")$"
        topics.append({"user": user.name, "vhost": vhost, "exchange": EVENTS_EXCHANGE,
                       "write": user.publish_regex(), "read": binds})
        topics.append({"user": user.name, "vhost": vhost, "exchange": DEAD_LETTER_EXCHANGE,
                       "write": ".*", "read": "^#$"})
    users.append(_user(ADMIN_USER, ensure_password(folder, ADMIN_USER), "administrator"))
    permissions.append({"user": ADMIN_USER, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
    return {"users": users, "permissions": permissions, "topic_permissions": topics}


def _bound_keys(user: BrokerUser) -> tuple[str, ...]:
    """Every service declares (so binds) the whole topology: all its queues' routing keys."""
    return event_routing_keys()


def _user(name: str, password: str, tags: str) -> dict[str, Any]:
    return {"name": name, "password_hash": _password_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}


def write_for_compose(root: Path, owner: int) -> Path:
    """docker-compose's credentials, written by its one-shot ``credentials`` service (as root)
    into folders that are separate volumes, so each container gets only what it needs:

    * ``root/all``: every password, made once (mode 600, root's): the operator's copy, which
      ``deploy/compose-env`` reads; mounted in no service;
    * ``root/broker/definitions.json``: users (salted hashes only), permissions and topic
      permissions, which RabbitMQ loads at boot (``load_definitions``; it then never creates
      ``guest``); mode 644 for the broker's own user;
    * ``root/<service user>/amqp-<service user>``: that service's password alone, owned by
      ``owner`` (the services' uid), mode 600: a service's container, and any code a service
      runs there, can read no other account's password.

    Returns the definitions' path.
    """
    master = root / "all"
    doc = definitions(master)
    doc["vhosts"] = [{"name": "/"}]  # a node that loads definitions at boot seeds no default vhost
    os.chmod(master, 0o700)
    for user in USERS:
        if user.name == "tunebus-cli":
            continue  # the host's CLI reads it from the operator's copy
        folder = root / user.name
        folder.mkdir(exist_ok=True)
        _write_private(folder / f"amqp-{user.name}", ensure_password(master, user.name), owner)
        os.chown(folder, owner, owner)
        os.chmod(folder, 0o700)
    broker = root / "broker"
    broker.mkdir(exist_ok=True)
    os.chmod(broker, 0o755)
    target = broker / "definitions.json"
    partial = broker / "definitions.json.partial"
    partial.write_text(json.dumps(doc))
    partial.chmod(0o644)
    partial.replace(target)
    return target


def _write_private(path: Path, text: str, owner: int) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text + "\n")
    os.chown(partial, owner, owner)
    partial.chmod(0o600)
    partial.replace(path)


def main(argv: list[str]) -> None:
    """``python -m shared.broker_users DIR``: print definitions JSON (deploy/local imports it);
    ``python -m shared.broker_users --compose ROOT --owner UID``: write compose's credentials."""
    if len(argv) == 1:
        json.dump(definitions(Path(argv[0])), sys.stdout)
    elif len(argv) == 4 and argv[0] == "--compose" and argv[2] == "--owner" and argv[3].isdigit():
        print(f"broker credentials ready: {write_for_compose(Path(argv[1]), int(argv[3]))}")
    else:
        sys.exit("usage: python -m shared.broker_users CREDENTIALS_DIR  (prints definitions JSON)\n"
                 "       python -m shared.broker_users --compose ROOT --owner UID")


if __name__ == "__main__":
    main(sys.argv[1:])
