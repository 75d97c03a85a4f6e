"""The trial side: the ``nni`` shim against a local HTTP server standing in for blob storage."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tunebus.trial_runtime import RUNTIME_DIR
from tunebus.trial_runtime.nni import MetricReportError, TrialRuntime, _blob, _metric_document, _parse_json
from tunebus.trial_runtime.nni.utils import merge_parameter

BLOB = "experiments/exp1/trials/tr1/results.jsonl"
SAS = "sv=2021-08-06&sr=b&sp=a&sig=c2VjcmV0%2Bsig%3D"


@dataclass
class Put:
    """One PUT (an Append Block) the fake blob service received."""

    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def blob(self) -> str:
        return self.path.removeprefix("/devstoreaccount1/tunebus/")

    @property
    def doc(self) -> Any:
        assert self.body.endswith(b"\n") and self.body.count(b"\n") == 1, "one record, one line"
        return json.loads(self.body)


@dataclass
class FakeBlobService:
    """Records PUTs; answers with the queued statuses first, then 201."""

    url: str
    puts: list[Put] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    requests: int = 0

    def stored(self) -> list[Put]:
        """The PUTs answered with 201, i.e. the blobs that exist."""
        return [p for p in self.puts if p.headers.get("x-test-status") == "201"]


@pytest.fixture()
def blob_service() -> Iterator[FakeBlobService]:
    service = FakeBlobService(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                service.requests += 1
                status = service.statuses.pop(0) if service.statuses else 201
            path, _, query = self.path.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers["x-test-status"] = str(status)
            service.puts.append(Put(path, query, headers, body))
            payload = b"" if status == 201 else b"<Error><Code>AuthenticationFailed</Code></Error>"
            self.send_response(status)
            if status == 403:
                self.send_header("x-ms-error-code", "AuthenticationFailed")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    service.url = f"http://127.0.0.1:{server.server_port}/devstoreaccount1/tunebus/{BLOB}?{SAS}"
    yield service
    server.shutdown()
    server.server_close()


def trial_env(url: str, **extra: str) -> dict[str, str]:
    env = {
        "NNI_PLATFORM": "local",
        "NNI_EXP_ID": "exp1",
        "NNI_TRIAL_JOB_ID": "tr1",
        "NNI_TRIAL_SEQ_ID": "7",
        "NNI_OUTPUT_DIR": "/tmp/out",
        "TUNEBUS_PARAMETERS": json.dumps({"lr": 0.01, "act": "relu", "layers": {"_name": "deep", "n": 3}}),
        "TUNEBUS_METRICS_URL": url,
    }
    env.update(extra)
    return env


# ---------------------------------------------------------------- tunebus mode


def test_identity_and_parameters(blob_service: FakeBlobService) -> None:
    rt = TrialRuntime(trial_env(blob_service.url))
    assert (rt.experiment_id, rt.trial_id, rt.sequence_id) == ("exp1", "tr1", 7)
    assert rt.get_current_parameter() is None
    params = rt.get_next_parameter()
    assert params == {"lr": 0.01, "act": "relu", "layers": {"_name": "deep", "n": 3}}
    assert rt.get_current_parameter("act") == "relu"
    params["lr"] = 1.0  # the caller's copy; what the runtime holds stays as given
    assert rt.get_current_parameter("lr") == 0.01


def test_each_report_is_one_append_to_the_results_blob_in_order(blob_service: FakeBlobService) -> None:
    rt = TrialRuntime(trial_env(blob_service.url))
    rt.get_next_parameter()
    rt.report(0.5, "PERIODICAL")
    rt.report(3, "PERIODICAL")
    rt.report({"default": 0.97, "loss": 0.1, "per_class": [0.9, 1.0]}, "FINAL")

    assert [p.blob for p in blob_service.puts] == [BLOB] * 3
    assert all(p.query == f"{SAS}&comp=appendblock" for p in blob_service.puts), "the SAS is sent untouched"
    docs = [p.doc for p in blob_service.puts]
    assert [(d["sequence"], d["kind"], d["value"]) for d in docs] == [
        (0, "PERIODICAL", 0.5),
        (1, "PERIODICAL", 3),
        (2, "FINAL", {"default": 0.97, "loss": 0.1, "per_class": [0.9, 1.0]}),
    ]
    assert set(docs[0]) == {"sequence", "kind", "value", "time"}
    for doc in docs:
        assert datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).utcoffset() is not None
    for put in blob_service.puts:
        assert "x-ms-blob-type" not in put.headers, "an append never (re)creates the blob"
        assert put.headers["x-ms-version"] == "2021-08-06"


def test_numpy_scalars_are_plain_numbers_on_the_wire(blob_service: FakeBlobService) -> None:
    np = pytest.importorskip("numpy")
    rt = TrialRuntime(trial_env(blob_service.url))
    rt.report(np.float32(0.25), "PERIODICAL")
    rt.report(np.array(0.5), "PERIODICAL")
    rt.report({"default": np.float64(0.75), "n": np.int64(4)}, "FINAL")
    assert [p.doc["value"] for p in blob_service.puts] == [0.25, 0.5, {"default": 0.75, "n": 4}]


@pytest.mark.parametrize(
    ("metric", "error", "says"),
    [
        ("0.9", TypeError, "str"),
        (None, TypeError, "NoneType"),
        (True, TypeError, "bool"),
        ([0.9], TypeError, "list"),
        ({"accuracy": 0.9}, ValueError, "'default'"),
        ({"default": "0.9"}, TypeError, "metric['default']"),
        ({"default": None}, TypeError, "metric['default']"),
        (float("nan"), ValueError, "finite"),
        ({"default": float("inf")}, ValueError, "finite"),
        (10 ** 400, ValueError, "too large for a float"),
        ({"default": -(10 ** 5000)}, ValueError, "too large for a float"),
    ],
)
def test_bad_metric_is_rejected_before_anything_is_written(
    blob_service: FakeBlobService, metric: Any, error: type[Exception], says: str
) -> None:
    rt = TrialRuntime(trial_env(blob_service.url))
    with pytest.raises(error, match=says.replace("[", r"\[").replace("]", r"\]")):
        rt.report(metric, "FINAL")
    assert blob_service.puts == []
    rt.report(0.9, "FINAL")  # the trial can still report, with the first sequence number
    assert [p.doc["sequence"] for p in blob_service.puts] == [0]


def test_second_final_result_is_rejected(blob_service: FakeBlobService) -> None:
    rt = TrialRuntime(trial_env(blob_service.url))
    rt.report(0.9, "FINAL")
    with pytest.raises(RuntimeError, match="already"):
        rt.report(0.95, "FINAL")
    assert [p.doc["kind"] for p in blob_service.puts] == ["FINAL"]


def test_transient_errors_are_retried(blob_service: FakeBlobService) -> None:
    blob_service.statuses = [503, 500]
    rt = TrialRuntime(trial_env(blob_service.url))
    rt.report(0.5, "PERIODICAL")
    assert blob_service.requests == 3
    assert [p.doc["sequence"] for p in blob_service.stored()] == [0]


def test_client_error_fails_loudly_naming_status_and_blob(blob_service: FakeBlobService) -> None:
    blob_service.statuses = [403]
    rt = TrialRuntime(trial_env(blob_service.url))
    with pytest.raises(MetricReportError) as info:
        rt.report(0.5, "PERIODICAL")
    message = str(info.value)
    assert "403" in message and "AuthenticationFailed" in message
    assert BLOB in message
    assert "sig=" not in message, "the SAS signature must not leak into errors"
    assert blob_service.requests == 1, "a 4xx is not retried"
    rt.report(0.6, "PERIODICAL")  # the failed report did not use up its sequence number
    assert blob_service.stored()[0].doc["sequence"] == 0


def test_unreachable_storage_gives_up_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_blob, "RETRY_DELAYS", (0.0, 0.0))
    rt = TrialRuntime(trial_env("http://127.0.0.1:9/devstoreaccount1/tunebus/a/results.jsonl?sig=x"))
    with pytest.raises(MetricReportError, match="after 3 attempts"):
        rt.report(0.5, "FINAL")


def test_missing_variable_is_named(blob_service: FakeBlobService) -> None:
    env = trial_env(blob_service.url)
    env["NNI_PLATFORM"] = "local"
    del env["TUNEBUS_METRICS_URL"]
    with pytest.raises(RuntimeError, match="TUNEBUS_METRICS_URL"):
        TrialRuntime(env).report(0.5, "FINAL")
    del env["TUNEBUS_PARAMETERS"]
    with pytest.raises(RuntimeError, match="TUNEBUS_PARAMETERS"):
        TrialRuntime(env).get_next_parameter()


# ---------------------------------------------------------------- standalone mode


def test_standalone_mode_behaves_like_nni_without_runtime(caplog: pytest.LogCaptureFixture) -> None:
    rt = TrialRuntime({})
    assert (rt.experiment_id, rt.trial_id, rt.sequence_id) == ("STANDALONE", "STANDALONE", 0)
    with pytest.warns(RuntimeWarning, match="without runtime"):
        assert rt.get_next_parameter() == {}
    with caplog.at_level(logging.INFO, logger="nni"):
        rt.report(0.5, "PERIODICAL")
        rt.report({"default": 0.9}, "FINAL")
        rt.report(0.95, "FINAL")  # NNI standalone does not police this; it only logs
    assert [r.getMessage() for r in caplog.records if r.name == "nni"] == [
        "Intermediate result: 0.5  (Index 0)",
        "Final result: {'default': 0.9}",
        "Final result: 0.95",
    ]
    with pytest.raises(ValueError, match="'default'"):
        rt.report({"acc": 1.0}, "FINAL")


def test_standalone_takes_parameters_from_env_for_debugging() -> None:
    rt = TrialRuntime({"TUNEBUS_PARAMETERS": '{"C": 2.0}'})
    assert rt.standalone
    assert rt.get_next_parameter() == {"C": 2.0}


# ---------------------------------------------------------------- as `import nni` in a real process


FAKE_REAL_NNI = "raise ImportError('the real nni was imported instead of the tunebus shim')\n"

TRIAL_SCRIPT = textwrap.dedent(
    """
    import sys
    import nni
    heavy = sorted(m for m in ("http.client", "typing", "logging", "email") if m in sys.modules)
    params = nni.get_next_parameter()
    for epoch in range(2):
        nni.report_intermediate_result({"default": 0.5 + epoch / 10, "epoch": epoch})
    nni.report_final_result(0.9)
    from nni.utils import merge_parameter
    import nni.trial
    print(nni.__file__)
    print(nni.get_experiment_id(), nni.get_trial_id(), nni.get_sequence_id(), params["lr"], heavy)
    print(sorted(m for m in ("tunebus", "pydantic", "aio_pika", "azure") if m in sys.modules))
    print(sorted(m for m in ("http.client", "ssl", "email") if m in sys.modules))
    """
)


def test_import_nni_gets_the_shim_in_a_trial_process(blob_service: FakeBlobService, tmp_path: Path) -> None:
    real_nni = tmp_path / "site" / "nni"
    real_nni.mkdir(parents=True)
    (real_nni / "__init__.py").write_text(FAKE_REAL_NNI)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NNI_", "TUNEBUS_"))}
    env.update(trial_env(blob_service.url))
    env["PYTHONPATH"] = os.pathsep.join([RUNTIME_DIR, str(tmp_path / "site")])
    result = subprocess.run(
        [sys.executable, "-c", TRIAL_SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    shim_file, ids, imported, http_stack = result.stdout.splitlines()
    assert Path(shim_file) == Path(RUNTIME_DIR) / "nni" / "__init__.py"
    assert ids == "exp1 tr1 7 0.01 []", "import nni must not pull in typing, logging or HTTP"
    assert imported == "[]", "the shim must be self-contained"
    assert http_stack == "[]", "reports over plain http must not import http.client, ssl or email"
    assert [(p.doc["sequence"], p.doc["kind"]) for p in blob_service.puts] == [
        (0, "PERIODICAL"), (1, "PERIODICAL"), (2, "FINAL"),
    ]


NOOP_TRIAL = textwrap.dedent(
    """
    import sys
    import nni
    params = nni.get_next_parameter()
    nni.report_final_result(params["lr"] * 10)
    print(sorted(m for m in ("json", "re", "enum", "numbers", "encodings.idna") if m in sys.modules))
    """
)


def test_a_no_op_trial_imports_no_json_regex_or_idna(blob_service: FakeBlobService, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NNI_", "TUNEBUS_"))}
    env.update(trial_env(blob_service.url))
    env["PYTHONPATH"] = RUNTIME_DIR
    result = subprocess.run([sys.executable, "-c", NOOP_TRIAL], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", "a number metric and the parameters need no json/re/idna"
    [put] = blob_service.puts
    assert put.doc["kind"] == "FINAL"
    assert put.doc["value"] == pytest.approx(0.1)


@pytest.mark.parametrize("text", [
    '{"lr":0.01,"act":"relu","layers":[64,32],"opt":{"_name":"adam","beta":0.9}}',
    '  {"a": -1.5e-3, "b": 12345678901234567890, "c": true, "d": null, "e": false}\n',
    '{"s":"caf\\u00e9 \\"q\\" \\n", "u":"日本"}',
    '{"n": NaN, "i": Infinity, "m": -Infinity}',
    '{}',
    '[1, 2]',
])
def test_parameter_json_is_parsed_like_json_loads(text: str) -> None:
    ours, theirs = _parse_json(text), json.loads(text)
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    assert type(ours) is type(theirs)


@pytest.mark.parametrize("text", ['{"a": 1', '{"a": 1} x', "", "[1,]", '{"a": 01}', "{'a': 1}"])
def test_bad_parameter_json_raises_like_json_loads(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        _parse_json(text)


def test_bad_parameter_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = TrialRuntime({"TUNEBUS_PARAMETERS": '{"lr": 0.1', "TUNEBUS_METRICS_URL": "http://h/a/c"})
    with pytest.raises(ValueError, match="TUNEBUS_PARAMETERS is not valid JSON"):
        rt.get_next_parameter()


@pytest.mark.parametrize(
    "value", [0, -3, 12345678901234567890, 0.1, -0.0, 1e16, 1.5e-7, 2.0 ** 70, {"default": 0.5, "x": [1, 2]}],
)
def test_metric_documents_are_the_json_of_their_fields(value: Any) -> None:
    body = _metric_document(4, "FINAL", value, "2026-11-26T08:00:00.000001Z")
    doc = json.loads(body)
    assert doc == {"sequence": 4, "kind": "FINAL", "value": value, "time": "2026-11-26T08:00:00.000001Z"}
    assert type(doc["value"]) is type(value)


def test_tunebus_trial_reexports_the_same_api() -> None:
    import tunebus.trial as trial

    for name in trial.__all__:
        assert callable(getattr(trial, name)), name
    assert trial.get_sequence_id() == int(os.environ.get("NNI_TRIAL_SEQ_ID", 0))


# ---------------------------------------------------------------- nni.utils


def test_merge_parameter_overrides_defaults_keeping_types() -> None:
    import argparse

    args = argparse.Namespace(lr=0.1, batch_size=32, act=None)
    merge_parameter(args, {"lr": 1, "act": "relu"})
    assert (args.lr, type(args.lr), args.act) == (1.0, float, "relu")
    with pytest.raises(TypeError, match="batch_size"):
        merge_parameter(args, {"batch_size": "64"})
    with pytest.raises(ValueError, match="momentum"):
        merge_parameter({"lr": 0.1}, {"momentum": 0.9})
    assert merge_parameter({"lr": 0.1}, None) == {"lr": 0.1}
