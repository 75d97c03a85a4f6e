""".ci/check-skips: CI prints every skip reason and fails on one that .ci/allowed-skips does not allow.

The sample logs are what pytest's ``-rfEs`` prints; one test makes a real pytest log (the
installed pytest, a test file with a skip) so a change in pytest's summary format shows here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CHECK = REPO_ROOT / ".ci" / "check-skips"
ALLOWED = REPO_ROOT / ".ci" / "allowed-skips"
COMPOSE_SKIP = ("SKIPPED [1] tests/integration/test_infra.py:141: neither docker-compose nor the docker "
                "compose plugin is installed")
AML_SKIP = "SKIPPED [26] tests/unit/test_aml_backend.py:33: azureml-core (the aml extra) is not installed"


def _check(allowlist: Path, *logs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CHECK), str(allowlist), *map(str, logs)], capture_output=True,
                          text=True, timeout=60, check=False)


def _log(tmp_path: Path, *lines: str, name: str = "pytest.log") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(["....s..", "===== short test summary info =====", *lines,
                               "700 passed, 3 skipped in 12.30s", ""]))
    return path


def _allowlist(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "allowed-skips"
    path.write_text(text)
    return path


def test_an_allowed_skip_passes_and_is_printed(tmp_path: Path) -> None:
    result = _check(ALLOWED, _log(tmp_path, COMPOSE_SKIP))
    assert result.returncode == 0, result.stderr
    assert "skip allowed     [1] tests/integration/test_infra.py:141: neither docker-compose" in result.stdout
    assert "skips: 1, not allowed: 0" in result.stdout


def test_a_skip_no_entry_allows_fails_naming_it(tmp_path: Path) -> None:
    result = _check(ALLOWED, _log(tmp_path, COMPOSE_SKIP, AML_SKIP))
    assert result.returncode == 1
    assert ("skip NOT ALLOWED [26] tests/unit/test_aml_backend.py:33: azureml-core (the aml extra) is not "
            "installed") in result.stdout
    assert "skips: 27, not allowed: 26" in result.stdout


def test_every_log_is_read(tmp_path: Path) -> None:
    clean = _log(tmp_path, COMPOSE_SKIP, name="test.log")
    compose = _log(tmp_path, AML_SKIP, name="compose.log")
    assert _check(ALLOWED, clean).returncode == 0
    assert _check(ALLOWED, clean, compose).returncode == 1


def test_no_skip_passes_even_with_an_empty_allowlist(tmp_path: Path) -> None:
    empty = _allowlist(tmp_path, "# nothing may skip\n\n")
    result = _check(empty, _log(tmp_path, "FAILED tests/x.py::test_y - assert 1 == 2"))
    assert result.returncode == 0, result.stderr
    assert "skips: 0, not allowed: 0" in result.stdout
    assert _check(empty, _log(tmp_path, COMPOSE_SKIP)).returncode == 1


def test_an_entry_matches_the_path_and_the_reason(tmp_path: Path) -> None:
    # Anchored to one file: the same reason from another file is not allowed.
    allowlist = _allowlist(tmp_path, "# why\n^tests/a\\.py:[0-9]+: no GPU$\n")
    assert _check(allowlist, _log(tmp_path, "SKIPPED [2] tests/a.py:9: no GPU")).returncode == 0
    assert _check(allowlist, _log(tmp_path, "SKIPPED [2] tests/b.py:9: no GPU")).returncode == 1
    assert _check(allowlist, _log(tmp_path, "SKIPPED [2] tests/a.py:9: no GPU here")).returncode == 1


def test_coloured_logs_are_read(tmp_path: Path) -> None:
    coloured = "\x1b[33mSKIPPED\x1b[0m [1] tests/integration/test_infra.py:141: neither docker-compose nor " \
               "the docker compose plugin is installed"
    result = _check(ALLOWED, _log(tmp_path, coloured))
    assert result.returncode == 0 and "skips: 1, not allowed: 0" in result.stdout


@pytest.mark.parametrize(("text", "complaint"), [
    ("^tests/a\\.py:[0-9]+: no GPU$\n", "no comment saying why"),
    ("# why\n\n^tests/a\\.py: no GPU$\n", "no comment saying why"),  # a blank line ends a comment's group
    ("# why\n(unclosed\n", "invalid regex"),
])
def test_a_bad_allowlist_is_refused(tmp_path: Path, text: str, complaint: str) -> None:
    result = _check(_allowlist(tmp_path, text), _log(tmp_path))
    assert result.returncode == 2
    assert complaint in result.stderr


def test_missing_files_are_errors(tmp_path: Path) -> None:
    assert _check(tmp_path / "none", _log(tmp_path)).returncode == 2
    assert _check(ALLOWED, tmp_path / "no.log").returncode == 2


def test_the_allowlist_in_the_repository_is_valid() -> None:
    empty_log = Path("/dev/null")
    result = _check(ALLOWED, empty_log)
    assert result.returncode == 0, result.stderr


def test_a_real_pytest_log_is_parsed(tmp_path: Path) -> None:
    """The installed pytest's -rfEs summary, from a test file that skips (one allowed reason, one not)."""
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert 1 + 1 == 2\n\n"
        "def test_allowed():\n    pytest.skip('no GPU on this runner')\n\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_not_allowed(n):\n    pytest.skip('forgot to install it')\n"
    )
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                          "test_sample.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    log = tmp_path / "pytest.log"
    log.write_text(run.stdout)
    allowlist = _allowlist(tmp_path, "# the sample's runner has no GPU\n: no GPU on this runner$\n")
    result = _check(allowlist, log)
    assert result.returncode == 1, result.stdout
    assert "skip allowed     [1] test_sample.py:" in result.stdout
    assert "skip NOT ALLOWED [2] test_sample.py:" in result.stdout and "forgot to install it" in result.stdout
    assert "skips: 3, not allowed: 2" in result.stdout
