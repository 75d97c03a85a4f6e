"""An end-to-end test's own bounds end a slow run, with what the services logged, before pytest's
hang guard ends it with no word (which also counts starting the test's stack)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import E2E_TIMEOUT_SECONDS

E2E = Path(__file__).resolve().parents[1] / "e2e"
#: What starting a test's stack (RabbitMQ, Azurite, the services) may take on a loaded machine.
STACK_START_SECONDS = 120


def test_every_inner_bound_of_an_e2e_test_fits_under_its_pytest_timeout() -> None:
    bounds = {
        f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}": float(match.group(1))
        for path in sorted(E2E.glob("*.py"))
        for text in [path.read_text()]
        for match in re.finditer(r"\btimeout=(\d+(?:\.\d+)?)", text)
    }
    assert len(bounds) > 10, "the e2e tests' bounds were not found"
    too_long = {where: b for where, b in bounds.items() if b + STACK_START_SECONDS > E2E_TIMEOUT_SECONDS}
    assert not too_long, f"inner bounds that pytest's {E2E_TIMEOUT_SECONDS} s guard would cut: {too_long}"
