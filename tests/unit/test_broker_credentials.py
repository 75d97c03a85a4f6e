"""Broker logins from files (docker-compose's credentials volume), never from the repository."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shared.broker_users import ADMIN_USER, USERS, write_for_compose
from shared.settings import CommonSettings, SettingsMissing, load_service_settings


def test_the_password_file_fills_in_the_urls_password(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cr/t+&pw\n")
    monkeypatch.setenv("TUNEBUS_AMQP_URL", "amqp://tunebus-tuner@rabbitmq:5672/")
    monkeypatch.setenv("TUNEBUS_AMQP_PASSWORD_FILE", str(tmp_path / "pw"))
    settings = CommonSettings()
    assert settings.amqp_url == "amqp://tunebus-tuner:s3cr%2Ft%2B%26pw@rabbitmq:5672/"
    assert "the broker password (TUNEBUS_AMQP_URL)" in settings.known_secrets()


@pytest.mark.parametrize(("url", "content", "error"), [
    ("amqp://rabbitmq:5672/", "pw", "needs a user name"),
    ("amqp://u@rabbitmq:5672/", "\n", "is empty"),
    ("amqp://u@rabbitmq:5672/", None, "No such file"),
])
def test_a_bad_password_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str,
                                      content: str | None, error: str) -> None:
    if content is not None:
        (tmp_path / "pw").write_text(content)
    monkeypatch.setenv("TUNEBUS_AMQP_URL", url)
    monkeypatch.setenv("TUNEBUS_AMQP_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(ValueError, match=error):
        CommonSettings()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root (CI runs as root)")
def test_compose_credentials_give_each_service_its_own_password_alone(tmp_path: Path) -> None:
    root = tmp_path / "credentials"
    root.mkdir()
    definitions = write_for_compose(root, owner=10001)
    assert definitions == root / "broker" / "definitions.json"
    doc = json.loads(definitions.read_text())
    assert {u["name"] for u in doc["users"]} == {u.name for u in USERS} | {ADMIN_USER}
    assert doc["vhosts"] == [{"name": "/"}]
    assert stat.S_IMODE(definitions.stat().st_mode) == 0o644
    master = {path.name.removeprefix("amqp-"): path.read_text().strip() for path in (root / "all").iterdir()}
    assert set(master) == {u.name for u in USERS} | {ADMIN_USER}
    assert stat.S_IMODE((root / "all").stat().st_mode) == 0o700 and (root / "all").stat().st_uid == 0
    assert len(set(master.values())) == len(master)
    assert not any(pw in definitions.read_text() for pw in master.values())  # hashes only
    services = {u.name for u in USERS} - {"tunebus-cli"}
    for user in services:
        folder = root / user
        assert [p.name for p in folder.iterdir()] == [f"amqp-{user}"], user  # its own, nothing else
        info = (folder / f"amqp-{user}").stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (10001, 0o600), user
        assert (folder / f"amqp-{user}").read_text().strip() == master[user]
    assert set(p.name for p in root.iterdir()) == {"all", "broker", *services}
    # Run again (each `up`): the same passwords, definitions rewritten.
    write_for_compose(root, owner=10001)
    assert all((root / "all" / f"amqp-{u}").read_text().strip() == pw for u, pw in master.items())


def test_a_service_without_its_settings_exits_2_naming_them() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBUS_")}
    result = subprocess.run([sys.executable, "-m", "services.metric_ingestor"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "TUNEBUS_AMQP_URL and TUNEBUS_STORAGE_CONNECTION_STRING not set" in result.stderr
    assert "TUNEBUS_USE_LOCAL_DEFAULTS=1" in result.stderr


def test_local_defaults_are_taken_only_when_asked_for() -> None:
    with pytest.raises(SettingsMissing, match="TUNEBUS_STORAGE_CONNECTION_STRING not set"):
        load_service_settings(CommonSettings, {"TUNEBUS_AMQP_URL": "amqp://u:p@h/"})
    settings = load_service_settings(CommonSettings, {"TUNEBUS_USE_LOCAL_DEFAULTS": "1"})
    assert settings.amqp_url.startswith("amqp://guest:guest@127.0.0.1")
