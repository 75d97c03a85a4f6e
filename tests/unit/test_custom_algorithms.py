"""Custom tuners and assessors written as NNI documents them, run by the tuner service from their
stored code archive, each experiment's in a worker process of its own: a raising, hanging or
memory-leaking one ends its own experiment in ERROR with a reason, and no other waits on it."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from services.tuner.service import TunerService
from shared.code_archive import build_code_archive
from shared.layout import Layout
from shared.messages import (
    ExperimentError,
    ExperimentStatusChanged,
    MetricKind,
    SuggestRequest,
    TrialEnded,
    TrialMetric,
    TrialStatus,
    TrialStopRequested,
    TrialSuggested,
)
from tests.integration.fakes import RecordingBus

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}}

# A tuner as NNI's "Customize Tuner" page writes one: subclass nni.tuner.Tuner, use nni.utils.
WALKER = '''
import numpy as np

import nni
from nni.tuner import Tuner
from nni.utils import OptimizeMode, extract_scalar_reward

from helper import OFFSET


class Walker(Tuner):
    """Walks x from the range's low end in steps; tells what it has learned in each suggestion."""

    def __init__(self, optimize_mode="maximize", step=0.25):
        self.optimize_mode = OptimizeMode(optimize_mode)
        self.step = step
        self.results = {}

    def update_search_space(self, search_space):
        self.low, self.high = search_space["x"]["_value"]

    def generate_parameters(self, parameter_id, **kwargs):
        {body}
        x = self.low + self.step * parameter_id
        if x > self.high:
            raise nni.NoMoreTrialError("walked the whole range")
        print("suggesting", x)  # a user's print must not disturb anything
        return {"x": np.float64(x), "offset": OFFSET, "learned": len(self.results)}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        self.results[parameter_id] = extract_scalar_reward(value)

    def import_data(self, data):
        for i, record in enumerate(data):
            if record["value"] is not None:
                self.results[-1 - i] = extract_scalar_reward(record["value"])
'''

# An assessor as NNI's "Customize Assessor" page writes one.
STOPPER = '''
from nni.assessor import Assessor, AssessResult
from nni.utils import extract_scalar_history


class Stopper(Assessor):
    def __init__(self, below=0.5):
        self.below = below
        self.ended = []

    def assess_trial(self, trial_job_id, trial_history):
        history = extract_scalar_history(trial_history)
        return AssessResult.Bad if history[-1] < self.below else AssessResult.Good

    def trial_end(self, trial_job_id, success):
        self.ended.append(trial_job_id)
'''


class _Store:
    """Experiment documents and code archives, as the tuner service reads them from storage."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.blobs: dict[str, bytes] = {}

    async def read_json(self, path: str) -> tuple[Any, str] | None:
        return (self.docs[path], "etag") if path in self.docs else None

    async def read_bytes(self, path: str) -> bytes | None:
        if path in self.docs:  # a document, read as bytes (the state summary is)
            return json.dumps(self.docs[path]).encode()
        return self.blobs.get(path)


def _tuner_dir(folder: Path, body: str = "pass", offset: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "walker.py").write_text(textwrap.dedent(WALKER).replace("{body}", body))
    (folder / "helper.py").write_text(f"OFFSET = {offset}\n")
    return folder


def _add_experiment(store: _Store, experiment_id: str, tuner_dir: Path, assessor_dir: Path | None = None,
                    class_args: dict[str, Any] | None = None) -> None:
    """Store the experiment as tunebus create and the dispatcher would: archives, not paths."""
    layout = Layout(experiment_id)
    config: dict[str, Any] = {"searchSpace": SPACE, "trialConcurrency": 1,
                              "tuner": {"className": "walker.Walker", "classArgs": class_args or {}}}
    code = {"tuner": layout.algorithm_code_archive("tuner")}
    store.blobs[code["tuner"]] = build_code_archive(tuner_dir)
    if assessor_dir is not None:
        config["assessor"] = {"className": "stopper.Stopper", "classArgs": {"below": 0.5}}
        code["assessor"] = layout.algorithm_code_archive("assessor")
        store.blobs[code["assessor"]] = build_code_archive(assessor_dir)
    store.docs[layout.experiment_doc] = {"config": config, "algorithm_code": code}


def _service(tmp_path: Path, store: _Store, limit: float = 10.0,
             memory_mb: int = 2048) -> tuple[TunerService, RecordingBus]:
    bus = RecordingBus()
    service = TunerService(bus, store, custom_call_timeout=limit,  # type: ignore[arg-type]
                           custom_memory_limit_mb=memory_mb, work_dir=tmp_path / "tuner-work")
    return service, bus


def _suggested(bus: RecordingBus, experiment_id: str) -> list[TrialSuggested]:
    return [m for m in bus.published if isinstance(m, TrialSuggested) and m.experiment_id == experiment_id]


def _error(bus: RecordingBus, experiment_id: str) -> ExperimentError:
    [error] = [m for m in bus.published
               if isinstance(m, ExperimentError) and m.experiment_id == experiment_id]
    return error


async def _end(service: TunerService, experiment_id: str) -> None:
    await service.handlers()[ExperimentStatusChanged](
        ExperimentStatusChanged(experiment_id=experiment_id, status="DONE"))


# ---------------------------------------------------------------- NNI-style code runs unchanged


async def test_an_nni_style_tuner_runs_from_its_stored_code_with_nni_semantics(tmp_path: Path) -> None:
    store = _Store()
    source = _tuner_dir(tmp_path / "src", offset=7.0)
    _add_experiment(store, "e1", source, class_args={"optimize_mode": "minimize", "step": 0.5})
    for file in source.iterdir():  # the tuner service has only the stored archive
        file.unlink()
    service, bus = _service(tmp_path, store)
    handlers = service.handlers()
    await handlers[SuggestRequest](SuggestRequest(experiment_id="e1", parameter_ids=[0, 1]))
    first, second = _suggested(bus, "e1")
    # numpy's float64 arrives as a number; the sibling module `helper` was importable
    assert first.parameters == {"x": 0.0, "offset": 7.0, "learned": 0}
    assert second.parameters == {"x": 0.5, "offset": 7.0, "learned": 0}
    await handlers[TrialEnded](TrialEnded(experiment_id="e1", trial_id="t0", parameter_id=0,
                                          status=TrialStatus.SUCCEEDED, final_value=0.9))
    await handlers[SuggestRequest](SuggestRequest(experiment_id="e1", parameter_ids=[2, 3]))
    third, fourth = _suggested(bus, "e1")[2:]
    assert third.parameters["learned"] == 1, "receive_trial_result reached the user's object"
    assert fourth.parameters is None, "nni.NoMoreTrialError: the space is exhausted"
    assert not [m for m in bus.published if isinstance(m, ExperimentError)]
    worker_pid = service._sessions["e1"].calls.process.pid  # type: ignore[attr-defined]
    await _end(service, "e1")
    await _wait_gone(worker_pid)
    assert not (tmp_path / "tuner-work" / "e1").exists(), "the experiment's code folder is removed"


async def _wait_gone(pid: int | None, timeout: float = 10.0) -> None:
    assert pid is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {pid} still runs")


async def test_an_nni_style_assessor_stops_a_poor_trial(tmp_path: Path) -> None:
    store = _Store()
    assessor_dir = tmp_path / "assessor"
    assessor_dir.mkdir()
    (assessor_dir / "stopper.py").write_text(textwrap.dedent(STOPPER))
    _add_experiment(store, "e1", _tuner_dir(tmp_path / "tuner"), assessor_dir)
    service, bus = _service(tmp_path, store)
    on_metric = service.handlers()[TrialMetric]
    for trial, values in (("good", [0.9, 0.8]), ("poor", [0.9, 0.2])):
        for sequence, value in enumerate(values):
            await on_metric(TrialMetric(experiment_id="e1", trial_id=trial, parameter_id=0, sequence=sequence,
                                        kind=MetricKind.PERIODICAL, value=value))
    stops = [m for m in bus.published if isinstance(m, TrialStopRequested)]
    assert [m.trial_id for m in stops] == ["poor"], bus.published


async def test_a_worker_sees_no_service_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEBUS_STORAGE_CONNECTION_STRING", "AccountKey=service-secret-key")
    store = _Store()
    body = ("return {'env': sorted(k for k in __import__('os').environ"
            " if k.startswith(('TUNEBUS', 'AZURE'))),"
            " 'exp': __import__('os').environ['NNI_EXP_ID']}")
    _add_experiment(store, "e1", _tuner_dir(tmp_path / "src", body=body))
    service, bus = _service(tmp_path, store)
    await service.handlers()[SuggestRequest](SuggestRequest(experiment_id="e1", parameter_ids=[0]))
    [answer] = _suggested(bus, "e1")
    assert answer.parameters == {"env": [], "exp": "e1"}
    await _end(service, "e1")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI and deploy/local run as root)")
async def test_a_root_tuner_runs_its_workers_as_the_trial_user(tmp_path: Path) -> None:
    import pwd
    import shutil
    import tempfile

    from shared.sandbox import Sandbox

    folder = Path(tempfile.mkdtemp(prefix="tunebus-worker-"))  # the trial user must reach it
    try:
        folder.chmod(0o755)
        secret = folder / "root-only"
        secret.write_text("the tuner's secret")
        secret.chmod(0o600)
        store = _Store()
        body = (f"return {{'uid': __import__('os').getuid(), "
                f"'reads_root_file': __import__('os').access({str(secret)!r}, 4)}}")
        _add_experiment(store, "e1", _tuner_dir(tmp_path / "src", body=body))
        bus = RecordingBus()
        service = TunerService(bus, store, custom_call_timeout=30,  # type: ignore[arg-type]
                               work_dir=folder / "tuner-work", sandbox=Sandbox.for_this_process())
        await service.handlers()[SuggestRequest](SuggestRequest(experiment_id="e1", parameter_ids=[0]))
        [answer] = _suggested(bus, "e1")
        assert answer.parameters == {"uid": pwd.getpwnam("tunebus-trial").pw_uid, "reads_root_file": False}
        await _end(service, "e1")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_tuner_that_cannot_sandbox_its_workers_runs_no_custom_algorithm(tmp_path: Path) -> None:
    store = _Store()
    _add_experiment(store, "e1", _tuner_dir(tmp_path / "src"))
    bus = RecordingBus()
    service = TunerService(bus, store, work_dir=tmp_path / "tuner-work",  # type: ignore[arg-type]
                           sandbox="the trial user 'tunebus-trial' does not exist")
    await service.handlers()[SuggestRequest](SuggestRequest(experiment_id="e1", parameter_ids=[0]))
    assert not _suggested(bus, "e1")
    reason = _error(bus, "e1").reason
    assert "runs no custom algorithm: the trial user 'tunebus-trial' does not exist" in reason


# ---------------------------------------------------------------- failures end only their own experiment


async def test_a_raising_tuner_errors_its_experiment_with_the_traceback_tail(tmp_path: Path) -> None:
    store = _Store()
    _add_experiment(store, "bad", _tuner_dir(tmp_path / "bad", body="1 / 0"))
    _add_experiment(store, "good", _tuner_dir(tmp_path / "good"))
    service, bus = _service(tmp_path, store)
    handle = service.handlers()[SuggestRequest]
    await handle(SuggestRequest(experiment_id="bad", parameter_ids=[0]))
    await handle(SuggestRequest(experiment_id="good", parameter_ids=[0]))
    reason = _error(bus, "bad").reason
    assert reason.startswith("custom tuner 'walker.Walker': generate_parameters failed:\nTraceback"), reason
    assert "walker.py" in reason and reason.endswith("ZeroDivisionError: division by zero")
    assert "services/tuner" not in reason, "tunebus's own frames are left out"
    assert len(_suggested(bus, "good")) == 1
    await handle(SuggestRequest(experiment_id="bad", parameter_ids=[1]))
    assert len(bus.published) == 2, "a failed experiment's later requests build nothing"
    await _end(service, "good")


async def test_a_hanging_tuner_is_ended_within_its_limit_and_holds_up_no_one(tmp_path: Path) -> None:
    store = _Store()
    _add_experiment(store, "stuck", _tuner_dir(tmp_path / "stuck", body="import time; time.sleep(3600)"))
    _add_experiment(store, "good", _tuner_dir(tmp_path / "good"))
    service, bus = _service(tmp_path, store, limit=3.0)
    handle = service.handlers()[SuggestRequest]
    stuck = asyncio.create_task(handle(SuggestRequest(experiment_id="stuck", parameter_ids=[0])))
    await handle(SuggestRequest(experiment_id="good", parameter_ids=[0, 1]))
    assert len(_suggested(bus, "good")) == 2 and not stuck.done(), "the other experiment did not wait"
    await asyncio.wait_for(stuck, 30)  # ended by its 3 s limit, not by the hour-long sleep
    assert "generate_parameters did not return within 3 s" in _error(bus, "stuck").reason
    assert "its process was ended" in _error(bus, "stuck").reason
    await _end(service, "good")


async def test_a_leaking_tuner_hits_its_memory_limit_and_errors_its_experiment(tmp_path: Path) -> None:
    store = _Store()
    leak = "self.__dict__.setdefault('hoard', []).append(bytearray(64 * 2**20))"
    _add_experiment(store, "leaky", _tuner_dir(tmp_path / "leaky", body=leak))
    _add_experiment(store, "good", _tuner_dir(tmp_path / "good"))
    service, bus = _service(tmp_path, store, memory_mb=400)
    handle = service.handlers()[SuggestRequest]
    for pid in range(0, 40, 4):
        await handle(SuggestRequest(experiment_id="leaky", parameter_ids=[pid, pid + 1, pid + 2, pid + 3]))
        await handle(SuggestRequest(experiment_id="good", parameter_ids=[pid]))
    reason = _error(bus, "leaky").reason
    assert reason.startswith("custom tuner 'walker.Walker': generate_parameters failed:"), reason
    assert "MemoryError\n(the worker's memory limit is 400 MiB: TUNEBUS_CUSTOM_MEMORY_LIMIT_MB)" in reason \
        or "out of memory" in reason, reason
    assert len(_suggested(bus, "leaky")) < 8
    assert _suggested(bus, "good")[0].parameters == {"x": 0.0, "offset": 0.0, "learned": 0}
    assert not [m for m in bus.published if isinstance(m, ExperimentError) and m.experiment_id == "good"]
    await _end(service, "good")


async def test_config_problems_are_reasons_without_a_traceback(tmp_path: Path) -> None:
    store = _Store()
    _add_experiment(store, "args", _tuner_dir(tmp_path / "args"), class_args={"no_such_arg": 1})
    _add_experiment(store, "gone", _tuner_dir(tmp_path / "gone"))
    del store.blobs[Layout("gone").algorithm_code_archive("tuner")]
    secret = _tuner_dir(tmp_path / "secret")
    (secret / "walker.py").write_text((secret / "walker.py").read_text().replace(
        "self.step = step", "raise RuntimeError('needs a GPU: AccountKey=abc123secret;')"))
    _add_experiment(store, "secret", secret)
    service, bus = _service(tmp_path, store)
    for experiment_id in ("args", "gone", "secret"):
        await service.handlers()[SuggestRequest](
            SuggestRequest(experiment_id=experiment_id, parameter_ids=[0]))
    assert _error(bus, "args").reason.startswith(
        "tuner 'walker.Walker': classArgs do not fit the constructor")
    assert "no_such_arg" in _error(bus, "args").reason
    assert _error(bus, "gone").reason == (
        "custom tuner 'walker.Walker': its code archive experiments/gone/algorithms/tuner.tar.gz "
        "is not in storage")
    reason = _error(bus, "secret").reason
    assert reason.startswith("loading custom tuner 'walker.Walker' failed:\nTraceback")
    assert "RuntimeError: needs a GPU" in reason and "abc123secret" not in reason


# ---------------------------------------------------------------- the worker, directly

PLAIN_TUNER = '''
import itertools

class NoMoreTrialError(Exception):
    pass

class CountingTuner:
    """No base class, no optional method: NNI's defaults fill in (trial_end, import_data, ...)."""

    def __init__(self, start, limit=3):
        self.counter = itertools.count(start)
        self.limit = limit
        self.results = []

    def update_search_space(self, search_space):
        self.space = search_space

    def generate_parameters(self, parameter_id, **kwargs):
        x = next(self.counter)
        if x >= self.limit:
            raise NoMoreTrialError("done")
        return {"x": x, "results": len(self.results)}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        self.results.append((parameter_id, value))
'''


def _worker(tmp_path: Path, algorithms: dict[str, Any]) -> Any:
    from services.tuner.custom_process import AlgorithmProcess

    process = AlgorithmProcess("e1", tmp_path, memory_limit_bytes=0)
    process.deadline = time.monotonic() + 30
    try:
        process.request({"op": "load", "code_directories": [str(tmp_path)], "algorithms": algorithms})
    except BaseException:
        process.kill()
        raise
    return process


def test_a_plain_class_in_a_package_gets_nnis_defaults(tmp_path: Path) -> None:
    from services.tuner.algorithms import NoMoreTrials, RemoteTuner

    (tmp_path / "my_tuners").mkdir()
    (tmp_path / "my_tuners" / "__init__.py").write_text("")
    (tmp_path / "my_tuners" / "counting.py").write_text(textwrap.dedent(PLAIN_TUNER))
    space = {"x": {"_type": "randint", "_value": [0, 10]}}
    process = _worker(tmp_path, {"tuner": {"className": "my_tuners.counting.CountingTuner",
                                           "classArgs": {"start": 1}, "searchSpace": space}})
    try:
        tuner = RemoteTuner(process, "my_tuners.counting.CountingTuner")
        assert tuner.generate_parameters(0) == {"x": 1, "results": 0}
        tuner.receive_trial_result(0, {"x": 1}, 0.5)
        tuner.trial_end(0, True)
        tuner.import_data([{"parameter": {"x": 1}, "value": 0.5}])
        assert tuner.generate_multiple_parameters([1, 2, 3]) == [{"x": 2, "results": 1}]
        with pytest.raises(NoMoreTrials, match="done"):
            tuner.generate_parameters(4)
    finally:
        process.kill()


def test_load_problems_name_the_role_and_what_to_fix(tmp_path: Path) -> None:
    from services.tuner.custom_process import RemoteConfigError

    (tmp_path / "broken.py").write_text("class NotATuner:\n    pass\n")
    for class_name, problem in (("broken.NotATuner",
                                 "must implement update_search_space, generate_parameters"),
                                ("missing_module.Tuner", "cannot load the class: No module named"),
                                ("NoModule", "className must look like 'module.ClassName'")):
        with pytest.raises(RemoteConfigError, match=problem) as info:
            _worker(tmp_path, {"tuner": {"className": class_name}})
        assert info.value.role == "tuner"


def test_nnis_algorithm_api_is_only_the_workers(tmp_path: Path) -> None:
    """``import nni`` in the service finds no algorithm API; in the worker it is tunebus's (or a real NNI)."""
    import importlib.util
    import sys

    found = importlib.util.find_spec("nni")
    assert found is None or "algorithm_runtime" not in str(found.origin)
    assert not any("algorithm_runtime" in entry for entry in sys.path)
    (tmp_path / "probe.py").write_text(textwrap.dedent('''
        import nni, nni.tuner, nni.assessor, nni.utils, nni.typehint, nni.recoverable
        from nni.common.hpo_utils import OptimizeMode

        class Probe(nni.tuner.Tuner):
            def update_search_space(self, search_space):
                pass

            def generate_parameters(self, parameter_id, **kwargs):
                return {"nni": nni.__file__, "mode": OptimizeMode("maximize").value,
                        "split": nni.utils.split_index({"a": {"_index": 1, "_value": {"b": 2}}}),
                        "tuple": list(nni.utils.convert_dict2tuple({"y": {"z": 1}, "x": 0})),
                        "good": nni.assessor.AssessResult.Good.value,
                        "checkpoint": self.get_checkpoint_path()}

            def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
                pass
    '''))
    process = _worker(tmp_path, {"tuner": {"className": "probe.Probe"}})
    try:
        answer = process.request({"op": "call", "role": "tuner", "method": "generate_parameters",
                                  "args": [0]})
    finally:
        process.kill()
    assert "tunebus/algorithm_runtime/nni/__init__.py" in answer["nni"]
    assert answer["mode"] == "maximize" and answer["split"] == {"a": {"b": 2}}
    assert answer["tuple"] == [["x", 0], ["y", [["z", 1]]]] and answer["good"] is True
    assert answer["checkpoint"] is None


def test_a_worker_stuck_in_user_code_dies_with_a_killed_tuner(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    (tmp_path / "stuck.py").write_text(textwrap.dedent('''
        import time

        class Tuner:
            def update_search_space(self, search_space):
                pass

            def generate_parameters(self, parameter_id, **kwargs):
                time.sleep(3600)

            def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
                pass
    '''))
    tuner = textwrap.dedent(f'''
        import time
        from pathlib import Path
        from services.tuner.custom_process import AlgorithmProcess

        process = AlgorithmProcess("e1", Path({str(tmp_path)!r}), memory_limit_bytes=0)
        process.deadline = time.monotonic() + 60
        process.request({{"op": "load", "code_directories": [{str(tmp_path)!r}],
                          "algorithms": {{"tuner": {{"className": "stuck.Tuner"}}}}}})
        print(process.pid, flush=True)
        process.request({{"op": "call", "role": "tuner", "method": "generate_parameters", "args": [0]}})
    ''')
    service = subprocess.Popen([sys.executable, "-c", tuner], stdout=subprocess.PIPE, text=True)
    assert service.stdout is not None
    worker_pid = int(service.stdout.readline())
    os.kill(worker_pid, 0)  # running, stuck in the user's sleep
    service.send_signal(signal.SIGKILL)
    service.wait()
    service.stdout.close()
    asyncio.run(_wait_gone(worker_pid))


def test_a_start_must_name_its_own_stored_code_for_each_custom_algorithm() -> None:
    from services.dispatcher.service import check_algorithm_code
    from shared.bus import PermanentError
    from shared.config import parse_experiment_config
    from shared.messages import ExperimentStart

    config = {"searchSpace": SPACE, "trialCommand": "python3 t.py", "trialConcurrency": 1,
              "trainingService": {"platform": "local"},
              "tuner": {"className": "walker.Walker"}}
    parsed = parse_experiment_config(config)
    own = Layout("e1").algorithm_code_archive("tuner")

    def check(algorithm_code: dict[str, str]) -> dict[str, str]:
        msg = ExperimentStart(experiment_id="e1", config=config, algorithm_code=algorithm_code)
        return check_algorithm_code(msg, parsed)

    assert check({"tuner": own}) == {"tuner": "experiments/e1/algorithms/tuner.tar.gz"}
    with pytest.raises(PermanentError, match=r"tuner: a custom tuner \(className\) needs its code stored at "
                                             r"experiments/e1/algorithms/tuner\.tar\.gz"):
        check({"tuner": "experiments/e2/algorithms/tuner.tar.gz"})  # another experiment's code
    with pytest.raises(PermanentError, match="needs its code stored"):
        check({})
    with pytest.raises(PermanentError, match="names code for assessor"):
        check({"tuner": own, "assessor": Layout("e1").algorithm_code_archive("assessor")})
