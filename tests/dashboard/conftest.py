"""A real headless Chromium for the dashboard's browser tests: Debian's ``chromium``, driven by
Playwright (whose own browser downloads do not reach this network). Installed with apt-get
when missing, as root, so that ``make test`` on a fresh machine runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# The whole stack of services, as the e2e tests run it, for the browser tests.
from tests.e2e.conftest import stack, trial_work_dir  # noqa: F401

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def _find_chromium() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def _apt_install_chromium() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            pytest.fail(f"apt-get install chromium failed:\n{done.stderr[-2000:]}", pytrace=False)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium, installed first when it is missing and we may (root, apt-get)."""
    found = _find_chromium()
    if found is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail("the browser tests need chromium: apt-get install chromium", pytrace=False)
        _apt_install_chromium()
        found = _find_chromium()
    assert found is not None, "chromium installed but not on PATH"
    return found


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where the pages' screenshots go: ``TUNEBUS_DASHBOARD_SCREENSHOTS`` (docs/dashboard for
    the README's), else the test's tmp folder."""
    configured = os.environ.get("TUNEBUS_DASHBOARD_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
