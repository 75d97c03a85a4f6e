"""The dashboard's reads: JSON for its pages, each bounded whatever the experiment's size, and
each answered with an ETag of the state document's so that a live page's poll costs a 304."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from shared.messages import MetricKind
from shared.secrets_mask import mask_secrets, redact_secrets

from . import views
from .context import DASHBOARD, Dashboard, conditional, error, etag, now, state_tag
from .reader import CachedState, CachedSummary

_STREAMS = ("stdout", "stderr")
#: Curves drawn at most: asked for by id, or by default (the running and the best trials).
MAX_CURVES = 50
DEFAULT_CURVES = 30
MAX_CURVE_POINTS = 500


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
    tag = etag(request.query_string, *(f"{i}:{'none' if c is None else c.etag}" for i, c, _ in found))

    def build() -> dict[str, Any]:
        at = now()
        rows = [views.experiment_row(i, None if c is None else c.summary, config, at)
                for i, c, config in found]
        rows = [r for r in rows if not wanted or r["status"] in wanted]
        rows.sort(key=lambda r: r["started_at"] or "9999", reverse=True)
        return {"items": rows, "total": len(found)}

    return conditional(request, tag, build)


async def overview(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id = request.match_info["experiment"]
    cached = await dash.state_or_404(experiment_id)
    config = await dash.reader.config(experiment_id) or {}

    def build() -> dict[str, Any]:
        state = None if cached is None else cached.state
        return {
            "experiment": views.experiment_row(experiment_id, None if cached is None else cached.summary,
                                               config, now()),
            "running": state is not None and not state.finished,
            "counts": {} if cached is None else cached.summary.counts,
            "limits": views.experiment_limits(config, state),
            "config": views.shown_config(config),
        }

    return conditional(request, etag("overview", state_tag(cached), str(bool(config))), build)


async def metric(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    cached = await dash.state_or_404(request.match_info["experiment"])
    return conditional(request, etag("metric", state_tag(cached)),
                        lambda: views.metric_series(cached.state) if cached else None)


async def parameters(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id = request.match_info["experiment"]
    cached = await dash.state_or_404(experiment_id)
    top = request.query.get("top", "100")
    try:
        top_percent = float(top)
    except ValueError:
        raise error(400, f"top: want a percentage from 1 to 100, got {top[:20]!r}") from None
    if not 1 <= top_percent <= 100:
        raise error(400, f"top: want a percentage from 1 to 100, got {top_percent:g}")
    config = await dash.reader.config(experiment_id) or {}
    space = config.get("searchSpace") or config.get("search_space") or {}
    return conditional(request, etag("params", state_tag(cached), f"{top_percent:g}"),
                        lambda: views.parallel_coordinates(cached.state, space, top_percent=top_percent)
                        if cached else None)


async def trials(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    cached = await dash.state_or_404(request.match_info["experiment"])
    try:
        query = views.parse_trial_query(request.query)
    except views.QueryError as exc:
        raise error(400, str(exc)) from None
    empty = {"total": 0, "matched": 0, "offset": query.offset, "limit": query.limit, "items": []}
    return conditional(request, etag("trials", state_tag(cached), request.query_string),
                        lambda: views.query_trials(cached.index, query) if cached else empty)


def _live_tick(dash: Dashboard, running: bool) -> str:
    """A running trial appends results between changes of the state document (which follows
    them every few seconds): its answers change with the poll period too, so a page watching
    it reads them that often. Nothing for ended trials."""
    return str(int(time.monotonic() // dash.settings.dashboard_poll_seconds)) if running else ""


def _curve_trials(cached: CachedState, asked: str) -> list[str]:
    """The trials whose curves to draw: those asked for, else the running ones and the best."""
    state = cached.state
    if asked:
        ids = [i for i in asked.split(",") if i][:MAX_CURVES]
        bad = next((i for i in ids if i not in state.trials), None)
        if bad is not None:
            raise error(400, f"trials: no trial {bad[:40]!r}")
        return ids
    running = [t.trial_id for t in cached.index.trials if not t.ended and t.metric_count][-20:]
    scored = sorted((t for t in state.trials.values() if t.final_value is not None),
                    key=lambda t: t.final_value or 0.0, reverse=state.optimize_mode == "maximize")
    return list(dict.fromkeys([*running, *(t.trial_id for t in scored[:DEFAULT_CURVES])]))[:DEFAULT_CURVES]


async def intermediate(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id = request.match_info["experiment"]
    cached = await dash.state_or_404(experiment_id)
    if cached is None:
        return web.json_response({"curves": []})
    ids = _curve_trials(cached, request.query.get("trials", ""))
    tag = etag("curves", cached.etag, ",".join(ids),
               _live_tick(dash, any(not cached.state.trials[i].ended for i in ids)))
    if request.headers.get("If-None-Match") == tag:
        return web.Response(status=304, headers={"ETag": tag, "Cache-Control": "no-cache"})
    gate = asyncio.Semaphore(8)

    async def curve(trial_id: str) -> dict[str, Any]:
        trial = cached.state.trials[trial_id]
        async with gate:
            metrics, _ = await dash.reader.metrics(experiment_id, trial_id, trial.attempt,
                                                   dash.settings.dashboard_results_max_bytes,
                                                   ended=trial.ended)
        values = [m.value for m in metrics if m.kind == MetricKind.PERIODICAL]
        stride = max(1, -(-len(values) // MAX_CURVE_POINTS))
        steps = list(range(1, len(values) + 1))[::stride]
        return {"trial_id": trial_id, "sequence_id": trial.sequence_id, "status": trial.status.value,
                "step": steps, "value": values[::stride], "points": len(values)}

    curves = await asyncio.gather(*(curve(i) for i in ids))
    return web.json_response({"curves": curves}, headers={"ETag": tag, "Cache-Control": "no-cache"})


async def trial_detail(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD]
    experiment_id, trial_id = request.match_info["experiment"], request.match_info["trial"]
    cached = await dash.state_or_404(experiment_id)
    trial = None if cached is None else cached.state.trials.get(trial_id)
    if trial is None or cached is None:
        raise error(404, f"experiment {experiment_id} has no trial {trial_id[:40]!r}")
    tag = etag("trial", cached.etag, trial_id, _live_tick(dash, not trial.ended))
    if request.headers.get("If-None-Match") == tag:
        return web.Response(status=304, headers={"ETag": tag, "Cache-Control": "no-cache"})
    limit, results_limit = dash.settings.dashboard_log_tail_bytes, dash.settings.dashboard_results_max_bytes
    (metrics, problems), logs = await asyncio.gather(
        dash.reader.metrics(experiment_id, trial_id, trial.attempt, results_limit, ended=trial.ended),
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
    return web.json_response(body, headers={"ETag": tag, "Cache-Control": "no-cache"})


def add_read_routes(app: web.Application) -> None:
    api = "/api/experiments/{experiment}"
    app.router.add_get("/api/session", session)
    app.router.add_get("/api/experiments", experiments)
    app.router.add_get(api, overview)
    app.router.add_get(api + "/metric", metric)
    app.router.add_get(api + "/parameters", parameters)
    app.router.add_get(api + "/trials", trials)
    app.router.add_get(api + "/intermediate", intermediate)
    app.router.add_get(api + "/trials/{trial}", trial_detail)
