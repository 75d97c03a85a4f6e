"""Stand-ins that integration tests hand to services in place of the bus: they record what is published."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.messages import Message, Ticket, TrialStatusChanged


@dataclass
class RecordingBus:
    """Records messages and tickets instead of publishing them."""

    published: list[Message] = field(default_factory=list)
    tickets: list[Ticket] = field(default_factory=list)

    async def publish(self, msg: Message) -> None:
        self.published.append(msg)

    async def publish_many(self, msgs: Iterable[Message]) -> None:
        self.published.extend(msgs)

    async def publish_ticket(self, ticket: Ticket) -> None:
        self.tickets.append(ticket)

    def statuses(self) -> list[TrialStatusChanged]:
        return [m for m in self.published if isinstance(m, TrialStatusChanged)]
