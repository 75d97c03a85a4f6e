"""The dashboard in a real headless Chromium, against the whole stack running real experiments:
every page loads without console errors, its plots render with data, a running experiment's
page follows it without a reload, and stop, update and kill from the page reach it."""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.messages import ExperimentStatus, TrialStatus
from shared.state import ExperimentState
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Stack, wait_until, write_experiment

# 900 s: the first one may install chromium (apt-get) in its setup.
pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(900)]

TOKEN = "browser-test-token-0123456789"
DIGITS = REPO_ROOT / "examples" / "sklearn-digits"
# Long enough to be killed or stopped mid-run; reports a point every 0.2 s.
SLOW_TRIAL = """import time
import nni
params = nni.get_next_parameter()
for step in range(150):
    time.sleep(0.2)
    nni.report_intermediate_result(params["x"] * step / 150)
nni.report_final_result(params["x"])
"""
WAIT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Browser:
    """A page on the dashboard that records every console error and uncaught exception."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)

    async def open(self, path: str) -> None:
        await self.page.goto(self.base + path)
        await self.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)

    async def plotted(self, plot_id: str, selector: str, count: int | None = None) -> int:
        """Wait until the plot holds data and has drawn ``count`` (default: any) ``selector``
        nodes (a live page redraws after a change: the count to wait for, not to assert at
        once); how many it drew."""
        try:
            await self.page.wait_for_function(
                "([id, sel, count]) => { const gd = document.getElementById(id);"
                " if (!gd || !gd.data || gd.data.length === 0) return false;"
                " const drawn = gd.querySelectorAll(sel).length;"
                " return count === null ? drawn > 0 : drawn === count; }",
                arg=[plot_id, selector, count], timeout=WAIT_MS)
        except Exception as exc:
            seen = await self.page.evaluate(
                "id => { const gd = document.getElementById(id); return gd ? JSON.stringify("
                "{data: gd.data, html: gd.innerHTML.slice(0, 500)}).slice(0, 3000) : 'no ' + id; }", plot_id)
            raise AssertionError(f"{plot_id}: no {selector!r} ({exc}); console errors {self.errors}; "
                                 f"live: {await self.text('#live')}; plot: {seen}") from None
        return int(await self.page.evaluate(
            "([id, sel]) => document.getElementById(id).querySelectorAll(sel).length", [plot_id, selector]))

    async def shows_no_placeholders(self) -> None:
        """No 'null', 'undefined' or 'NaN' in the page's text (outside logs and the config)."""
        text = await self.page.evaluate(
            "() => { const copy = document.querySelector('main').cloneNode(true);"
            " copy.querySelectorAll('pre, .plot').forEach((n) => n.remove()); return copy.textContent; }")
        found = re.search(r"\b(null|undefined|NaN)\b", text)
        assert found is None, f"{self.page.url} shows {found.group()!r}: {text[:2000]}"

    async def text(self, selector: str) -> str:
        return str(await self.page.text_content(selector, timeout=WAIT_MS))


@pytest.fixture
async def dashboard(stack: Stack, browser: Any) -> AsyncIterator[Browser]:
    port = _free_port()
    stack.start("dashboard", TUNEBUS_DASHBOARD_PORT=str(port), TUNEBUS_DASHBOARD_TOKEN=TOKEN,
                TUNEBUS_DASHBOARD_POLL_SECONDS="0.5")
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    page = await context.new_page()
    opened = Browser(page, f"http://127.0.0.1:{port}")
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
    await page.goto(f"{opened.base}/?token={TOKEN}")  # sets the cookie, then drops the token from the URL
    assert "token" not in page.url
    yield opened
    await context.close()


def _running(state: ExperimentState) -> list[str]:
    return [t.trial_id for t in state.by_sequence() if t.status == TrialStatus.RUNNING]


def _create(stack: Stack, config: Path) -> str:
    created = stack.cli("create", "--config", str(config), "--json")
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout.strip().splitlines()[-1])["id"])


async def test_every_page_of_a_real_experiment_renders_live_without_errors(
        stack: Stack, dashboard: Browser, tmp_path: Path, screenshot_dir: Path) -> None:
    example = tmp_path / "sklearn-digits"
    shutil.copytree(DIGITS, example)
    config = yaml.safe_load((example / "config.yml").read_text())
    config.update(maxTrialNumber=8, trialConcurrency=2)
    (example / "config.yml").write_text(yaml.safe_dump(config))
    experiment_id = _create(stack, example / "config.yml")
    page = dashboard.page

    await dashboard.open("/")
    await page.wait_for_selector(f"tr[data-experiment='{experiment_id}']", timeout=WAIT_MS)

    await dashboard.open(f"/experiments/{experiment_id}")
    assert await dashboard.plotted("plot-metric", ".scatterlayer .point") >= 1
    first = await dashboard.text("#progress-trials")
    await page.wait_for_function(  # a trial more, with no reload
        "before => document.getElementById('progress-trials').textContent !== before", arg=first,
        timeout=60_000)
    state = await wait_until(stack, experiment_id, lambda s: s.finished, timeout=120)
    assert state.status == ExperimentStatus.DONE
    await page.wait_for_selector("#experiment-head [data-status=DONE]", timeout=WAIT_MS)
    await dashboard.plotted("plot-metric", ".scatterlayer .point", 8)
    await dashboard.plotted("plot-counts", ".bars .point", 1)
    await dashboard.shows_no_placeholders()
    await page.screenshot(path=screenshot_dir / "overview.png", full_page=True)

    await dashboard.open("/")
    await page.wait_for_selector(f"tr[data-experiment='{experiment_id}'] [data-status=DONE]", timeout=WAIT_MS)
    await dashboard.shows_no_placeholders()
    await page.screenshot(path=screenshot_dir / "experiments.png")

    await dashboard.open(f"/experiments/{experiment_id}#params")
    await dashboard.plotted("plot-params", ".axis", 4)  # C, gamma, kernel and the metric
    await dashboard.shows_no_placeholders()
    await page.screenshot(path=screenshot_dir / "hyper-parameters.png")
    await page.fill("#in-top", "25")
    await page.dispatch_event("#in-top", "change")
    await page.wait_for_function(
        "() => document.getElementById('params-note').textContent.startsWith('2 of 8')", timeout=WAIT_MS)

    await dashboard.open(f"/experiments/{experiment_id}#intermediate")
    await dashboard.plotted("plot-curves", ".scatterlayer .trace", 8)
    await dashboard.shows_no_placeholders()
    await page.screenshot(path=screenshot_dir / "intermediate.png")

    await dashboard.open(f"/experiments/{experiment_id}#trials")
    await page.wait_for_selector("#trials-table tbody tr[data-trial]", timeout=WAIT_MS)
    assert await page.locator("#trials-table tbody tr[data-trial]").count() == 8
    await page.click("th[data-sort=final]")
    await page.click("th[data-sort=final]")  # descending: the best first
    best = max(t.final_value or 0 for t in state.trials.values())
    await page.wait_for_function(
        "best => { const cell = document.querySelector('#trials-table tbody tr td:nth-child(4)');"
        " return cell && Math.abs(Number(cell.textContent) - best) < 1e-4; }", arg=best, timeout=WAIT_MS)
    # Key by key: each keystroke asks again, and the page must end on the last one's answer.
    await page.locator("#trial-search").press_sequentially('"kernel":"linear"')
    linear = sum(1 for t in state.trials.values() if t.parameters["kernel"] == "linear")
    await page.wait_for_function(
        "n => document.querySelectorAll('#trials-table tbody tr[data-trial]').length === n", arg=linear,
        timeout=WAIT_MS)
    await page.fill("#trial-search", "")
    await dashboard.shows_no_placeholders()
    await page.screenshot(path=screenshot_dir / "trials.png")

    trial = max(state.trials.values(), key=lambda t: t.final_value or 0)
    await dashboard.open(f"/experiments/{experiment_id}/trials/{trial.trial_id}")
    await page.wait_for_selector("#trial-metrics tbody tr", timeout=WAIT_MS)
    assert await page.locator("#trial-metrics tbody tr").count() == 4  # three folds and the final
    await dashboard.plotted("plot-trial", ".scatterlayer .point", 3)
    assert "test accuracy" in await dashboard.text("#log-stderr")  # the trial's logging
    await dashboard.shows_no_placeholders()
    await page.screenshot(path=screenshot_dir / "trial.png", full_page=True)
    assert dashboard.errors == []


async def test_update_kill_and_stop_from_the_page_reach_the_running_experiment(
        stack: Stack, dashboard: Browser, tmp_path: Path) -> None:
    config = write_experiment(tmp_path, SLOW_TRIAL, trialConcurrency=2, maxTrialNumber=20)
    experiment_id = _create(stack, config)
    page = dashboard.page
    state = await wait_until(stack, experiment_id, lambda s: len(_running(s)) == 2, timeout=60)

    await dashboard.open(f"/experiments/{experiment_id}#trials")
    await page.fill("#in-concurrency", "1")
    await page.click("#btn-update")
    await page.wait_for_selector("#feedback .notice:not(.bad)", timeout=WAIT_MS)
    await wait_until(stack, experiment_id, lambda s: s.updated_limits.get("trialConcurrency") == 1,
                     timeout=60)
    await page.wait_for_function("() => document.getElementById('limit-concurrency').textContent === '1'",
                                 timeout=WAIT_MS)

    victim = _running(state)[0]
    await page.click(f"#kill-{victim}", timeout=WAIT_MS)
    killed = await wait_until(stack, experiment_id,
                              lambda s: s.trials[victim].status == TrialStatus.USER_CANCELED, timeout=60)
    assert killed.status == ExperimentStatus.RUNNING
    await page.wait_for_selector(f"tr[data-trial='{victim}'] [data-status=USER_CANCELED]", timeout=WAIT_MS)

    await page.click("#btn-stop")
    stopped = await wait_until(stack, experiment_id, lambda s: s.finished, timeout=60)
    assert stopped.status == ExperimentStatus.STOPPED
    await page.wait_for_selector("#experiment-head [data-status=STOPPED]", timeout=WAIT_MS)
    await page.wait_for_selector("#btn-resume", timeout=WAIT_MS)
    assert dashboard.errors == []
