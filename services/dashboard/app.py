"""The dashboard's HTTP face: the pages, their static assets and the JSON API they read.

Every read answers with an ETag made of the state document's and the request's; a page asks
again with ``If-None-Match`` and gets a bodiless 304 while nothing changed.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from shared.messages import Message, MetricKind
from shared.secrets_mask import mask_secrets, redact_secrets

from . import actions, views
from .access import Access
from .reader import CachedState, CachedSummary, ExperimentReader
from .settings import DashboardSettings

__all__ = ["STATIC_DIR", "Dashboard", "build_app"]

STATIC_DIR = Path(__file__).parent / "static"
DASHBOARD: web.AppKey[Dashboard] = web.AppKey("dashboard")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_STREAMS = ("stdout", "stderr")
MAX_CURVES = 50
MAX_CURVE_POINTS = 500
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

Publish = Callable[[Message], Awaitable[None]]


def _plotly_js() -> tuple[str, bytes]:
    """plotly.js as shipped inside PyPI's ``plotly`` (no CDN: clusters are offline): its
    version and its gzip-compressed bytes (4.6 MB become ~1.4 MB on the wire)."""
    import plotly

    data = (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return str(plotly.__version__), gzip.compress(data, compresslevel=6, mtime=0)


@dataclass
class Dashboard:
    """What the handlers share."""

    settings: DashboardSettings
    reader: ExperimentReader
    access: Access
    publish: Publish

    async def state_or_404(self, experiment_id: str) -> CachedState | None:
        if not _ID.match(experiment_id):
            raise _error(400, f"invalid experiment id {experiment_id[:70]!r}")
        cached = await self.reader.state(experiment_id)
        if cached is None and not await self.reader.exists(experiment_id):
            raise _error(404, f"no experiment {experiment_id}")
        return cached


def _error(status: int, message: str) -> web.HTTPException:
    classes = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}
    cls = classes.get(status, web.HTTPBadRequest)
    return cls(text=web.json_response({"error": message}).text, content_type="application/json")


def _etag(*parts: str) -> str:
    return '"' + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32] + '"'


def _conditional(request: web.Request, etag: str, build: Callable[[], Any]) -> web.StreamResponse:
    """304 when the page already has this answer, else the JSON ``build()`` gives."""
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.json_response(build(), headers=headers)


def _state_tag(cached: CachedState | None) -> str:
    return "none" if cached is None else cached.etag


def _now() -> datetime:
    return datetime.now(UTC)


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


# ---------------------------------------------------------------- reads


async def session(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    return web.json_response({"actions": dash.access.token_ok(request),
                              "poll_seconds": dash.settings.dashboard_poll_seconds})


async def experiments(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    wanted = {s for s in request.query.get("status", "").upper().split(",") if s}
    ids = await dash.reader.experiment_ids()
    gate = asyncio.Semaphore(8)

    async def one(experiment_id: str) -> tuple[str, CachedSummary | None, dict[str, Any]]:
        async with gate:
            cached, config = await asyncio.gather(dash.reader.summary(experiment_id),
                                                  dash.reader.config(experiment_id))
            return experiment_id, cached, config or {}

    found = await asyncio.gather(*(one(i) for i in ids))
    etag = _etag(request.query_string, *(f"{i}:{'none' if c is None else c.etag}" for i, c, _ in found))

    def build() -> dict[str, Any]:
        now = _now()
        rows = [views.experiment_row(i, None if c is None else c.summary, config, now)
                for i, c, config in found]
        rows = [r for r in rows if not wanted or r["status"] in wanted]
        rows.sort(key=lambda r: r["started_at"] or "9999", reverse=True)
        return {"items": rows, "total": len(found)}

    return _conditional(request, etag, build)


async def overview(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id = request.match_info["experiment"]
    cached = await dash.state_or_404(experiment_id)
    config = await dash.reader.config(experiment_id) or {}

    def build() -> dict[str, Any]:
        state = None if cached is None else cached.state
        return {
            "experiment": views.experiment_row(experiment_id, None if cached is None else cached.summary,
                                               config, _now()),
            "running": state is not None and not state.finished,
            "counts": {} if cached is None else cached.summary.counts,
            "limits": views.experiment_limits(config, state),
            "tuner": config.get("tuner"), "platform": (config.get("trainingService") or {}).get("platform"),
            "config": views.shown_config(config),
        }

    return _conditional(request, _etag("overview", _state_tag(cached), str(bool(config))), build)


async def metric(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    cached = await dash.state_or_404(request.match_info["experiment"])
    return _conditional(request, _etag("metric", _state_tag(cached)),
                        lambda: views.metric_series(cached.state) if cached else None)


async def parameters(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id = request.match_info["experiment"]
    cached = await dash.state_or_404(experiment_id)
    top = request.query.get("top", "100")
    try:
        top_percent = float(top)
    except ValueError:
        raise _error(400, f"top: want a percentage from 1 to 100, got {top[:20]!r}") from None
    if not 1 <= top_percent <= 100:
        raise _error(400, f"top: want a percentage from 1 to 100, got {top_percent:g}")
    config = await dash.reader.config(experiment_id) or {}
    space = config.get("searchSpace") or config.get("search_space") or {}
    return _conditional(request, _etag("params", _state_tag(cached), f"{top_percent:g}"),
                        lambda: views.parallel_coordinates(cached.state, space, top_percent=top_percent)
                        if cached else None)


async def trials(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    cached = await dash.state_or_404(request.match_info["experiment"])
    try:
        query = views.parse_trial_query(request.query)
    except views.QueryError as exc:
        raise _error(400, str(exc)) from None
    empty = {"total": 0, "matched": 0, "offset": query.offset, "limit": query.limit, "items": []}
    return _conditional(request, _etag("trials", _state_tag(cached), request.query_string),
                        lambda: views.query_trials(cached.index, query) if cached else empty)


def _curve_trials(cached: CachedState, asked: str) -> list[str]:
    """The trials whose curves to draw: those asked for, else the running ones and the best."""
    state = cached.state
    if asked:
        ids = [i for i in asked.split(",") if i][:MAX_CURVES]
        bad = next((i for i in ids if i not in state.trials), None)
        if bad is not None:
            raise _error(400, f"trials: no trial {bad[:40]!r}")
        return ids
    running = [t.trial_id for t in state.by_sequence() if not t.ended and t.metric_count][-20:]
    scored = sorted((t for t in state.trials.values() if t.final_value is not None),
                    key=lambda t: t.final_value or 0.0, reverse=state.optimize_mode == "maximize")
    return list(dict.fromkeys([*running, *(t.trial_id for t in scored[:MAX_CURVES - len(running)])]))[:30]


async def intermediate(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id = request.match_info["experiment"]
    cached = await dash.state_or_404(experiment_id)
    if cached is None:
        return web.json_response({"curves": []})
    ids = _curve_trials(cached, request.query.get("trials", ""))
    etag = _etag("curves", cached.etag, ",".join(ids))
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    gate = asyncio.Semaphore(8)

    async def curve(trial_id: str) -> dict[str, Any]:
        trial = cached.state.trials[trial_id]
        async with gate:
            metrics, _ = await dash.reader.metrics(experiment_id, trial_id, trial.attempt,
                                                   dash.settings.dashboard_results_max_bytes)
        values = [m.value for m in metrics if m.kind == MetricKind.PERIODICAL]
        stride = max(1, -(-len(values) // MAX_CURVE_POINTS))
        steps = list(range(1, len(values) + 1))[::stride]
        return {"trial_id": trial_id, "sequence_id": trial.sequence_id, "status": trial.status.value,
                "step": steps, "value": values[::stride], "points": len(values)}

    curves = await asyncio.gather(*(curve(i) for i in ids))
    return web.json_response({"curves": curves}, headers={"ETag": etag, "Cache-Control": "no-cache"})


async def trial_detail(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id, trial_id = request.match_info["experiment"], request.match_info["trial"]
    cached = await dash.state_or_404(experiment_id)
    trial = None if cached is None else cached.state.trials.get(trial_id)
    if trial is None or cached is None:
        raise _error(404, f"experiment {experiment_id} has no trial {trial_id[:40]!r}")
    etag = _etag("trial", cached.etag, trial_id)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    limit, results_limit = dash.settings.dashboard_log_tail_bytes, dash.settings.dashboard_results_max_bytes
    (metrics, problems), logs = await asyncio.gather(
        dash.reader.metrics(experiment_id, trial_id, trial.attempt, results_limit),
        asyncio.gather(*(dash.reader.log_tail(experiment_id, trial_id, s, trial.attempt, limit)
                         for s in _STREAMS)))
    url = trial.job_url if trial.job_url and trial.job_url.startswith(("https://", "http://")) else None
    body = {
        "trial": views.trial_row(trial), "error": trial.error, "portal_url": url and mask_secrets(url),
        "kill_reason": trial.kill_reason,
        "metrics": [{"sequence": m.sequence, "kind": m.kind.value, "value": m.value,
                     "raw": redact_secrets(m.raw)} for m in metrics],
        "metric_problems": problems,
        "logs": {s: None if log is None else {"text": log.text, "size": log.size, "skipped": log.skipped}
                 for s, log in zip(_STREAMS, logs, strict=True)},
    }
    return web.json_response(body, headers={"ETag": etag, "Cache-Control": "no-cache"})


# ---------------------------------------------------------------- actions


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > 4096:
        raise _error(400, "body too large")
    try:
        body = await request.json()
    except ValueError:
        raise _error(400, "body: not JSON") from None
    if not isinstance(body, dict):
        raise _error(400, "body: want a JSON object")
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
            raise _error(404, f"no action {action[:30]!r}")
    except actions.ActionRefused as exc:
        raise _error(exc.status, str(exc)) from None
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
        raise _error(exc.status, str(exc)) from None
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
    api = "/api/experiments/{experiment}"
    app.router.add_get("/api/session", session)
    app.router.add_get("/api/experiments", experiments)
    app.router.add_get(api, overview)
    app.router.add_get(api + "/metric", metric)
    app.router.add_get(api + "/parameters", parameters)
    app.router.add_get(api + "/trials", trials)
    app.router.add_get(api + "/intermediate", intermediate)
    app.router.add_get(api + "/trials/{trial}", trial_detail)
    app.router.add_post(api + "/trials/{trial}/kill", kill)
    app.router.add_post(api + "/{action}", act)
    return app
