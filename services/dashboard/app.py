"""The dashboard's HTTP face: the pages and their static assets, the reads (:mod:`.reads`)
and the actions, behind the access rules (:mod:`.access`) and security headers."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from . import actions
from .context import DASHBOARD, Dashboard, error
from .reads import add_read_routes

STATIC_DIR = Path(__file__).parent / "static"

# Scripts from this server only. 'unsafe-eval': plotly's parallel coordinates draw with regl,
# which compiles its WebGL commands with Function() (without it the plot stays blank); the page
# puts every value in as text, never as markup or code. Plotly sets inline styles.
_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self' 'unsafe-eval'; "
                                "style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}



def _plotly_js() -> tuple[str, bytes]:
    """plotly.js as shipped inside PyPI's ``plotly`` (no CDN: clusters are offline): its
    version and its gzip-compressed bytes (4.8 MB become 1.5 MB on the wire)."""
    import plotly

    data = (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return str(plotly.__version__), gzip.compress(data, compresslevel=6, mtime=0)



# ---------------------------------------------------------------- pages and assets


async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _static_routes(app: web.Application) -> None:
    version, plotly_gz = _plotly_js()

    async def plotly_js(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/javascript", "Cache-Control": "public, max-age=86400",
                   "ETag": f'"plotly-{version}"'}
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=plotly_gz, headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=gzip.decompress(plotly_gz), headers=headers)

    app.router.add_get("/static/plotly.min.js", plotly_js)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)



# ---------------------------------------------------------------- actions


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > 4096:
        raise error(400, "body too large")
    try:
        body = await request.json()
    except ValueError:
        raise error(400, "body: not JSON") from None
    if not isinstance(body, dict):
        raise error(400, "body: want a JSON object")
    return body


async def act(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id, action = request.match_info["experiment"], request.match_info["action"]
    body = await _json_body(request)
    cached = await dash.state_or_404(experiment_id)
    state = None if cached is None else cached.state
    try:
        if action == "stop":
            msg = actions.stop_command(experiment_id, state)
        elif action == "resume":
            started = await dash.reader.config(experiment_id) is not None
            msg = actions.resume_command(experiment_id, state, started)
        elif action == "update":
            msg = actions.update_command(experiment_id, state, body)
        else:
            raise error(404, f"no action {action[:30]!r}")
    except actions.ActionRefused as exc:
        raise error(exc.status, str(exc)) from None
    await dash.publish(msg)
    return web.json_response({"published": msg.ROUTING_KEY, "message_id": msg.message_id}, status=202)


async def kill(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id, trial_id = request.match_info["experiment"], request.match_info["trial"]
    await _json_body(request)
    cached = await dash.state_or_404(experiment_id)
    try:
        msg = actions.kill_command(experiment_id, None if cached is None else cached.state, trial_id)
    except actions.ActionRefused as exc:
        raise error(exc.status, str(exc)) from None
    await dash.publish(msg)
    return web.json_response({"published": msg.ROUTING_KEY, "message_id": msg.message_id}, status=202)


# ---------------------------------------------------------------- the application


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(_SECURITY_HEADERS)
    return response


def build_app(dash: Dashboard) -> web.Application:
    """The aiohttp application: pages, assets, API."""
    app = web.Application(middlewares=[_security_headers, dash.access.middleware], client_max_size=64 * 1024)
    app[DASHBOARD] = dash
    for path in ("/", "/experiments/{experiment}", "/experiments/{experiment}/trials/{trial}"):
        app.router.add_get(path, page)
    _static_routes(app)
    add_read_routes(app)
    api = "/api/experiments/{experiment}"
    app.router.add_post(api + "/trials/{trial}/kill", kill)
    app.router.add_post(api + "/{action}", act)
    return app

