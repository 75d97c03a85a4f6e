"""Checking a stored state document before trusting it: the state and its outbox. Pure.

The dispatcher republishes its outbox when it loads an experiment (a crash may have come
between the state write and the publish). Storage is not trusted for that: an outbox entry is
published again only if it is a message the dispatcher itself emits (by routing key and
type), for that experiment, about one of that experiment's trials. Anything else means the
document was not written by the dispatcher, and the experiment ends in ERROR.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from shared.bus import PermanentError, parse_message
from shared.messages import (
    ExperimentStatusChanged,
    Message,
    SuggestionsWithdrawn,
    SuggestRequest,
    TrialEnded,
    TrialKill,
    TrialStatusChanged,
    TrialSubmit,
)
from shared.state import ExperimentState, OutboxEntry

__all__ = ["DISPATCHER_ROUTING_KEYS", "CorruptState", "checked_outbox", "checked_state"]

#: Every routing key the dispatcher publishes (lifecycle's messages, and its own tick).
DISPATCHER_ROUTING_KEYS = frozenset({
    ExperimentStatusChanged.ROUTING_KEY, SuggestRequest.ROUTING_KEY, SuggestionsWithdrawn.ROUTING_KEY,
    TrialSubmit.ROUTING_KEY,
    TrialKill.ROUTING_KEY, TrialEnded.ROUTING_KEY, TrialStatusChanged.ROUTING_KEY,
    "ticket.dispatcher.tick",
})
_REASON_CHARS = 1000


class CorruptState(ValueError):
    """The stored state document is not one the dispatcher wrote; the message says why."""


def _bounded(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS] + "...[truncated]"


def checked_state(body: bytes, experiment_id: str) -> ExperimentState:
    """The state document parsed and validated, for ``experiment_id``; CorruptState if it is not."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptState(_bounded(f"state.json is not JSON: {exc}")) from None
    try:
        state = ExperimentState.model_validate(doc)
    except (ValidationError, RecursionError) as exc:
        raise CorruptState(_bounded(f"state.json does not validate: {exc}")) from None
    if state.experiment_id != experiment_id:
        raise CorruptState(_bounded(f"state.json is for experiment {state.experiment_id!r}, "
                                    f"not {experiment_id!r}"))
    return state


def _checked_entry(index: int, entry: OutboxEntry, state: ExperimentState) -> Message:
    where = f"outbox entry {index} ({entry.routing_key[:60]!r})"
    if entry.routing_key not in DISPATCHER_ROUTING_KEYS:
        raise CorruptState(f"{where}: not a routing key the dispatcher publishes")
    try:
        msg = parse_message(entry.routing_key, json.dumps(entry.body).encode())
    except (PermanentError, ValueError, RecursionError) as exc:
        raise CorruptState(_bounded(f"{where}: {exc}")) from None
    if msg.experiment_id != state.experiment_id:
        raise CorruptState(f"{where}: for experiment {msg.experiment_id[:60]!r}, not {state.experiment_id!r}")
    trial_id = getattr(msg, "trial_id", None)
    if trial_id is not None and trial_id not in state.trials and all(
            t.trial_id != trial_id for t in state.pending_ended):
        # A trial that ended in the same change is in pending_ended (written with this outbox).
        raise CorruptState(f"{where}: trial {trial_id[:60]!r} is not one of the experiment's")
    return msg


def checked_outbox(state: ExperimentState) -> list[Message]:
    """The outbox as messages, each checked; CorruptState names the first that is not the dispatcher's."""
    return [_checked_entry(i, entry, state) for i, entry in enumerate(state.outbox)]
