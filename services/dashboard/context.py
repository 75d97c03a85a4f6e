"""What the dashboard's request handlers share: the service's parts, the id check, errors as
JSON, and conditional (ETag) answers."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from shared.messages import Message

from .access import Access
from .reader import CachedState, ExperimentReader
from .settings import DashboardSettings

__all__ = ["DASHBOARD", "Dashboard", "Publish", "conditional", "error", "etag", "now", "state_tag"]

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Publish = Callable[[Message], Awaitable[None]]


@dataclass
class Dashboard:
    """What the handlers share."""

    settings: DashboardSettings
    reader: ExperimentReader
    access: Access
    publish: Publish

    async def state_or_404(self, experiment_id: str) -> CachedState | None:
        if not _ID.match(experiment_id):
            raise error(400, f"invalid experiment id {experiment_id[:70]!r}")
        cached = await self.reader.state(experiment_id)
        if cached is None and not await self.reader.exists(experiment_id):
            raise error(404, f"no experiment {experiment_id}")
        return cached


DASHBOARD: web.AppKey[Dashboard] = web.AppKey("dashboard")


def error(status: int, message: str) -> web.HTTPException:
    """An HTTP error (400, 404 or 409) whose JSON body says what is wrong: ``{"error": ...}``."""
    classes = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}
    cls = classes.get(status, web.HTTPBadRequest)
    return cls(text=web.json_response({"error": message}).text, content_type="application/json")


def etag(*parts: str) -> str:
    """An ETag for an answer made from ``parts`` (a state document's ETag, the query)."""
    return '"' + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32] + '"'


def conditional(request: web.Request, tag: str, build: Callable[[], Any]) -> web.StreamResponse:
    """304 when the page already has this answer, else the JSON ``build()`` gives."""
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == tag:
        return web.Response(status=304, headers=headers)
    return web.json_response(build(), headers=headers)


def state_tag(cached: CachedState | None) -> str:
    return "none" if cached is None else cached.etag


def now() -> datetime:
    return datetime.now(UTC)
