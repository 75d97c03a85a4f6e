"""A delivery's body into its message class, bounded: what does not parse is a PermanentError."""

from __future__ import annotations

import json

from pydantic import ValidationError

from shared.bus.errors import PermanentError
from shared.messages import Message, Ticket, message_types

__all__ = ["MAX_BODY_BYTES", "parse_message"]

# A message body larger than this is refused (dead-lettered) before it is parsed.
MAX_BODY_BYTES = 1 << 20


def parse_message(routing_key: str, body: bytes) -> Message:
    """Validate a delivery into its message class; raises PermanentError naming what is wrong."""
    types = message_types()
    cls = Ticket if routing_key.startswith("ticket.") else types.get(routing_key)
    if cls is None:
        raise PermanentError(f"no message type for routing key {routing_key!r}")
    if len(body) > MAX_BODY_BYTES:
        raise PermanentError(f"body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentError(f"body is not JSON: {exc}") from exc
    except (RecursionError, ValueError, MemoryError) as exc:  # nesting too deep, a huge number
        raise PermanentError(f"body is not acceptable JSON: {type(exc).__name__}: {exc}"[:500]) from exc
    try:
        msg = cls.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise PermanentError(f"invalid {cls.__name__}: {details}"[:4000]) from exc
    except (RecursionError, ValueError, TypeError, MemoryError) as exc:
        raise PermanentError(f"invalid {cls.__name__}: {type(exc).__name__}: {exc}"[:500]) from exc
    if isinstance(msg, Ticket) and msg.routing_key != routing_key:
        raise PermanentError(f"ticket purpose {msg.purpose!r} does not match routing key {routing_key!r}")
    return msg
