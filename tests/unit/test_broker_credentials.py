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
def test_compose_credentials_are_private_to_the_services_uid(tmp_path: Path) -> None:
    folder = tmp_path / "credentials"
    definitions = write_for_compose(folder, owner=10001)
    doc = json.loads(definitions.read_text())
    assert {u["name"] for u in doc["users"]} == {u.name for u in USERS} | {ADMIN_USER}
    assert doc["vhosts"] == [{"name": "/"}]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o711
    assert stat.S_IMODE(definitions.stat().st_mode) == 0o644
    passwords = {}
    for user in (*(u.name for u in USERS), ADMIN_USER):
        path = folder / f"amqp-{user}"
        info = path.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (10001, 0o600), user
        passwords[user] = path.read_text().strip()
        assert passwords[user] not in definitions.read_text()  # hashes only
    assert len(set(passwords.values())) == len(passwords)
    # Run again (each `up`): the same passwords, definitions rewritten.
    write_for_compose(folder, owner=10001)
    assert all((folder / f"amqp-{u}").read_text().strip() == pw for u, pw in passwords.items())


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
