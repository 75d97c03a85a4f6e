"""Messages name the routing key they are published with."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.messages import Ticket, TrialEnded, TrialStatus, message_types


def test_every_message_says_its_routing_key_and_a_ticket_its_purpose() -> None:
    ended = TrialEnded(experiment_id="e", trial_id="t", parameter_id=0, status=TrialStatus.SUCCEEDED)
    assert ended.routing_key == "trial.ended"
    ticket = Ticket(experiment_id="e", purpose="aml.watch", due=datetime.now(UTC))
    assert ticket.routing_key == "ticket.aml.watch"
    assert all(key == cls.ROUTING_KEY and key for key, cls in message_types().items())
