"""shared.secrets_mask: every secret shape masked, in every place text leaves a process:
dead-letter copies and their reason, log lines, stored error texts, CLI output."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.bus import REASON_HEADER, Bus, without_secrets
from shared.messages import TrialStatus
from shared.secrets_mask import (
    SECRET_MASK,
    SecretMaskingFilter,
    install_log_masking,
    is_secret_name,
    mask_secrets,
    redact_secrets,
)
from shared.settings import AZURITE_CONNECTION_STRING
from shared.state import ExperimentState, OutboxEntry, TrialRecord
from tests.unit.test_cli import VALID, write_config
from tunebus import cli
from tunebus.cli.output import _Output

SECRET = "c2VjcmV0LWtleS1kby1ub3Qtc2hvdw=="  # base64, like an account key

# (template, what must survive): each template puts SECRET in one shape.
SHAPES = [
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={s};EndpointSuffix=core.windows.net",
     "AccountName=acct;AccountKey=***;EndpointSuffix"),
    ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey={s}",
     "SharedAccessKeyName=root;SharedAccessKey=***"),
    ("https://acct.blob.core.windows.net/c/b.json?sv=2021-08-06&se=2030-01-01&sp=acw&sig={s}",
     "?sv=2021-08-06&se=2030-01-01&sp=acw&sig=***"),
    ("https://acct.blob.core.windows.net/c/b?sig={s}&se=2030-01-01", "?sig=***&se=2030-01-01"),
    ("redirect=https%3A%2F%2Fa%2Fb%3Fsp%3Dr%26sig%3D{s}", "sig%3D***"),
    ("amqp://tunebus:{s}@rabbit:5672/vhost", "amqp://tunebus:***@rabbit:5672/vhost"),
    ("amqps://user:{s}@broker.example.com/", "amqps://user:***@broker.example.com/"),
    ('{{"sharedStorageAccountKey": "{s}", "containerName": "c"}}',
     '{"sharedStorageAccountKey": "***", "containerName": "c"}'),
    ("storageAccountKey: {s}\ncontainerName: c", "storageAccountKey: ***\ncontainerName: c"),
    ("{{'storage_account_key': '{s}'}}", "{'storage_account_key': '***'}"),
    ("AZURE_CLIENT_SECRET={s} AZURE_TENANT_ID=t", "AZURE_CLIENT_SECRET=*** AZURE_TENANT_ID=t"),
    ("export azure-client-secret = {s}", "azure-client-secret = ***"),
    ('password: "{s}"', 'password: "***"'),
    ("api_key={s}&q=1", "api_key=***&q=1"),
]


@pytest.mark.parametrize(("template", "kept"), SHAPES)
def test_each_secret_shape_is_masked_and_the_rest_kept(template: str, kept: str) -> None:
    masked = mask_secrets(template.format(s=SECRET))
    assert SECRET not in masked and SECRET[:12] not in masked
    assert kept in masked, masked
    assert mask_secrets(masked) == masked  # idempotent


def test_azurite_connection_string_keeps_everything_but_the_key() -> None:
    masked = mask_secrets(AZURITE_CONNECTION_STRING)
    assert masked == AZURITE_CONNECTION_STRING.replace(
        AZURITE_CONNECTION_STRING.split("AccountKey=")[1].split(";")[0], SECRET_MASK)


@pytest.mark.parametrize("text", [
    "trial 3 failed: exit code 1", "lr=0.01, layers=4", "tokenizer=bert keys=3 secretary: Bob",
    "https://acct.blob.core.windows.net/c/b?se=2030-01-01&sp=r", "http://127.0.0.1:10000/devstoreaccount1",
    "x: 1\ny: 2", "",
])
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert mask_secrets(text) == text


secret_values = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
                        min_size=8, max_size=64).filter(lambda s: s.strip("=") and s != SECRET_MASK)
noise = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@given(template=st.sampled_from([t for t, _ in SHAPES]), secret=secret_values, before=noise, after=noise)
def test_property_a_secret_in_any_shape_never_survives(template: str, secret: str, before: str,
                                                       after: str) -> None:
    text = f"{before} {template.format(s=secret)} {after}"
    masked = mask_secrets(text)
    # The secret may legitimately occur in the noise; it must not survive from the shape.
    assert masked.count(secret) <= f"{before} {after}".count(secret)
    assert mask_secrets(masked) == masked


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters=":=@%"), max_size=200))
def test_property_text_with_no_separator_is_unchanged(text: str) -> None:
    assert mask_secrets(text) == text


def test_masking_a_long_line_is_fast() -> None:
    import time

    lines = ["a" * 1_000_000, "x=" * 300_000, "amqp://a:" * 100_000 + "@", "a " * 500_000]
    started = time.monotonic()
    for line in lines:
        mask_secrets(line)
    # A hang guard, not a speed target (benchmarks hold those): linear masking takes about a
    # second for all four on a quiet machine, a quadratic pattern would take hours.
    assert time.monotonic() - started < 120


@pytest.mark.parametrize("name", ["storageAccountKey", "sharedStorageAccountKey", "storage_account_key",
                                  "AZURE_CLIENT_SECRET", "clientSecret", "password", "AccountKey",
                                  "sas_token"])
def test_secret_names_in_any_spelling(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["storageAccountName", "containerName", "keys", "secretary", "token_count"])
def test_names_that_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_secrets_masks_keys_and_shapes_in_values_at_any_depth() -> None:
    doc = {"config": {"sharedStorage": {"sharedStorageAccountKey": SECRET, "containerName": "c"},
                      "tuner": {"classArgs": {"AZURE_CLIENT_SECRET": 42,
                                              "note": f"AccountKey={SECRET};x=1"}}},
           "urls": [f"amqp://u:{SECRET}@h/", None], "storageAccountKey": None}
    clean = redact_secrets(doc)
    assert SECRET not in json.dumps(clean)
    assert clean["config"]["sharedStorage"] == {"sharedStorageAccountKey": "***", "containerName": "c"}
    assert clean["config"]["tuner"]["classArgs"] == {"AZURE_CLIENT_SECRET": "***",
                                                     "note": "AccountKey=***;x=1"}
    assert clean["urls"] == ["amqp://u:***@h/", None] and clean["storageAccountKey"] is None


# ---------------------------------------------------------------- dead letters


@pytest.mark.parametrize("body", [
    json.dumps({"experiment_id": "e", "config": {"sharedStorage": {"sharedStorageAccountKey": SECRET}}}),
    json.dumps({"experiment_id": "e", "note": f"https://a/b?sp=r&sig={SECRET}"}),
    f"not json: amqp://u:{SECRET}@h/",
    "[" * 100_000 + f'"AccountKey={SECRET}"' + "]" * 100_000,  # past the JSON parser's nesting
])
def test_dead_letter_bodies_are_masked(body: str) -> None:
    assert SECRET.encode() not in without_secrets(body.encode())


def test_dead_letter_bodies_that_are_not_text_are_kept() -> None:
    assert without_secrets(b"\xff\xfe\x00") == b"\xff\xfe\x00"


class _CapturingExchange:
    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish(self, message: Any, routing_key: str) -> None:
        self.published.append(message)


async def test_dead_letter_reason_header_is_masked() -> None:
    bus = Bus("amqp://unused/", service="test")
    exchange = _CapturingExchange()
    bus._dlx = exchange  # type: ignore[assignment]
    reason = f"invalid ExperimentStart: cannot reach https://a/c?sv=1&sig={SECRET} (AccountKey={SECRET})"
    await bus.dead_letter("experiment.start", b"{}", reason, "dispatcher")
    [message] = exchange.published
    header = message.headers[REASON_HEADER]
    assert SECRET not in header and "sig=***" in header and "AccountKey=***" in header


# ---------------------------------------------------------------- logs


def _masked_log(emit: Any) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.mask.{id(stream)}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    install_log_masking(logger)
    install_log_masking(logger)  # twice: one filter
    assert sum(isinstance(f, SecretMaskingFilter) for f in handler.filters) == 1
    emit(logger)
    return stream.getvalue()


def test_log_lines_mask_secrets_in_message_and_args() -> None:
    out = _masked_log(lambda log: log.warning("broker %s unreachable; storage %s",
                                              f"amqp://guest:{SECRET}@h:5672/", f"AccountKey={SECRET};"))
    assert SECRET not in out and "amqp://guest:***@h:5672/" in out and "AccountKey=***;" in out


def test_log_tracebacks_are_masked() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise RuntimeError(f"upload to https://a/b?se=1&sig={SECRET} failed")
        except RuntimeError:
            log.exception("failed")

    out = _masked_log(emit)
    assert SECRET not in out and "Traceback" in out and "sig=***" in out


def test_services_install_the_filter_on_the_root_logger() -> None:
    from shared.service import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        setup_logging("INFO")
        assert root.handlers and all(
            any(isinstance(f, SecretMaskingFilter) for f in h.filters) for h in root.handlers)
    finally:
        root.handlers = saved


# ---------------------------------------------------------------- stored error texts


def test_state_document_stores_errors_and_reasons_masked() -> None:
    now = datetime.now(UTC)
    trial = TrialRecord(trial_id="t1", sequence_id=0, parameters={}, status=TrialStatus.FAILED,
                        error=f"Traceback...\nazure: AuthenticationFailed for AccountKey={SECRET}",
                        kill_reason=f"amqp://u:{SECRET}@h/")
    state = ExperimentState(experiment_id="e", started_at=now, reason=f"tuner: sig={SECRET}",
                            trials={"t1": trial},
                            outbox=[OutboxEntry(routing_key="experiment.status",
                                                body={"reason": f"password={SECRET}", "status": "ERROR"})])
    stored = state.model_dump_json()
    assert SECRET not in stored and SECRET not in json.dumps(state.model_dump(mode="json"))
    again = ExperimentState.model_validate_json(stored)
    assert again.trials["t1"].error is not None and "AccountKey=***" in again.trials["t1"].error
    assert again.outbox[0].body == {"reason": "password=***", "status": "ERROR"}


# ---------------------------------------------------------------- CLI output


def test_cli_dry_run_masks_secret_shapes_anywhere_in_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    body = VALID.replace("trialCommand: python3 trial.py",
                         f"trialCommand: CONN='AccountKey={SECRET};' python3 trial.py")
    # A field a user names freely (built-ins' classArgs are checked at create, so not there).
    body = f"    experimentName: 'nightly https://acct.blob.core.windows.net/c?sp=r&sig={SECRET}'\n" + body
    config = write_config(tmp_path, body)
    assert cli.main(["create", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "AccountKey=***" in out and "sig=***" in out


def test_cli_errors_are_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = VALID.replace("trialConcurrency: 2", f"trialConcurrency: 'https://a/b?sp=r&sig={SECRET}'")
    config = write_config(tmp_path, body)
    assert cli.main(["create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "trialConcurrency" in err and SECRET[:20] not in err, err


def test_cli_output_streams_mask_what_any_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    output = _Output()
    print(f"reason: storage at AccountKey={SECRET};", file=output.out)
    output.note(f"amqp://u:{SECRET}@h/")
    print(f"error: sig={SECRET}", file=output.err)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "AccountKey=***;" in captured.out and "amqp://u:***@h/" in captured.out
