"""Who may use the dashboard.

* Bound to loopback (the default), pages and reads are open to this machine; the ``Host``
  header must name a loopback host, so that a web page elsewhere cannot reach it through DNS
  rebinding. Bound beyond loopback, every request needs the token.
* Every action (a POST) needs the token, whatever the binding, and a JSON body (which a form
  on another site cannot send without the browser asking first); an ``Origin``, when the
  browser sends one, must be this server's.
* The token comes as ``Authorization: Bearer <token>``, or as the ``tunebus_token`` cookie,
  which opening any page with ``?token=<token>`` sets (HttpOnly, SameSite=Strict) before
  redirecting to the same page without it, so the token leaves the address bar.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

__all__ = ["COOKIE", "Access", "new_token"]

COOKIE = "tunebus_token"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


class Access:
    """The middleware that enforces the rules above."""

    def __init__(self, token: str, *, loopback_only: bool) -> None:
        if len(token) < 16:
            raise ValueError("TUNEBUS_DASHBOARD_TOKEN: use at least 16 characters")
        self._token = token.encode()
        self.loopback_only = loopback_only

    def token_ok(self, request: web.Request) -> bool:
        """Whether the request carries the token (header or cookie)."""
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self._token)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.loopback_only and request.url.host not in _LOOPBACK_HOSTS:
            return _refused(403, f"host {request.host[:80]!r} is not this machine's loopback name")
        if "token" in request.query and request.method == "GET":
            return self._take_token(request)
        if request.method not in ("GET", "HEAD"):
            problem = self._action_problem(request)
            if problem is not None:
                return problem
        elif not self.loopback_only and not self.token_ok(request):
            return _refused(401, "this dashboard needs its token: open it with ?token=<token>")
        return await handler(request)

    def _take_token(self, request: web.Request) -> web.StreamResponse:
        given = request.query["token"]
        if not hmac.compare_digest(given.encode(), self._token):
            return _refused(401, "wrong token")
        query = {k: v for k, v in request.query.items() if k != "token"}
        moved = web.HTTPSeeOther(request.rel_url.with_query(query).human_repr())
        moved.set_cookie(COOKIE, given, httponly=True, samesite="Strict", path="/", secure=request.secure)
        raise moved

    def _action_problem(self, request: web.Request) -> web.StreamResponse | None:
        if not self.token_ok(request):
            return _refused(401, "actions need the dashboard's token: open the page with ?token=<token>")
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            return _refused(403, "cross-origin request refused")
        if request.content_type != "application/json":
            return _refused(415, "actions take a JSON body (Content-Type: application/json)")
        return None


def _refused(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
