"""Custom tuners and assessors written as NNI documents them, through the real services: their code
travels as stored archives (the folders they came from are gone when they run), each experiment's
runs in a worker process of its own, and one that raises, hangs or leaks memory ends its own
experiment in ERROR with a reason while another runs on to DONE."""

from __future__ import annotations

import shutil
import signal
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.code_archive import build_code_archive
from shared.messages import ExperimentStart
from shared.state import ExperimentState
from shared.storage import BlobStore, Layout
from tests.e2e.conftest import Stack, publish, wait_finished, wait_until, write_experiment

pytestmark = pytest.mark.e2e

CALL_LIMIT = 10.0  # TUNEBUS_CUSTOM_CALL_TIMEOUT for the failure tests
MEMORY_LIMIT_MB = 400  # TUNEBUS_CUSTOM_MEMORY_LIMIT_MB for the failure tests

# As NNI's "Customize Tuner" page: subclass nni.tuner.Tuner, use nni.utils, take classArgs.
WALKER = '''
import nni
from nni.tuner import Tuner
from nni.utils import OptimizeMode, extract_scalar_reward

from helper import OFFSET


class Walker(Tuner):
    def __init__(self, optimize_mode="maximize", step=0.2):
        self.optimize_mode = OptimizeMode(optimize_mode)
        self.step = step
        self.results = {}

    def update_search_space(self, search_space):
        self.space = search_space

    def generate_parameters(self, parameter_id, **kwargs):
        {body}
        return {"x": OFFSET + self.step * parameter_id, "learned": len(self.results)}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        self.results[parameter_id] = extract_scalar_reward(value)

    def import_data(self, data):
        for i, record in enumerate(data):
            if record["value"] is not None:
                self.results[("imported", i)] = extract_scalar_reward(record["value"])
'''

# As NNI's "Customize Assessor" page.
STOPPER = '''
from nni.assessor import Assessor, AssessResult
from nni.utils import extract_scalar_history


class Stopper(Assessor):
    def __init__(self, below=0.5):
        self.below = below

    def assess_trial(self, trial_job_id, trial_history):
        if extract_scalar_history(trial_history)[-1] < self.below:
            return AssessResult.Bad
        return AssessResult.Good
'''

# A trial below 0.5 keeps reporting (slowly) until the assessor stops it.
TRIAL = '''
import time
import nni

x = nni.get_next_parameter()["x"]
if x < 0.5:
    for step in range(60):
        nni.report_intermediate_result(x)
        time.sleep(0.5)
nni.report_final_result(x)
'''


def _walker(folder: Path, body: str = "pass", offset: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    (folder / "walker.py").write_text(textwrap.dedent(WALKER).replace("{body}", body))
    (folder / "helper.py").write_text(f"OFFSET = {offset}\n")
    return folder


def _stopper(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "stopper.py").write_text(textwrap.dedent(STOPPER))
    return folder


async def test_nni_style_tuner_and_assessor_run_from_storage_to_done_across_a_tuner_restart(
    stack: Stack, tmp_path: Path,
) -> None:
    tuner_dir, assessor_dir = _walker(tmp_path / "tuner"), _stopper(tmp_path / "assessor")
    config = write_experiment(
        tmp_path, textwrap.dedent(TRIAL), maxTrialNumber=6, trialConcurrency=2,
        tuner={"className": "walker.Walker", "codeDirectory": str(tuner_dir),
               "classArgs": {"optimize_mode": "maximize", "step": 0.2}},
        assessor={"className": "stopper.Stopper", "codeDirectory": str(assessor_dir),
                  "classArgs": {"below": 0.5}},
    )
    experiment_id = f"nni{uuid.uuid4().hex[:8]}"
    created = stack.cli("create", "--config", str(config), "--id", experiment_id)
    assert created.returncode == 0, created.stderr
    shutil.rmtree(tuner_dir)  # the tuner service has only what create stored
    shutil.rmtree(assessor_dir)

    await wait_until(stack, experiment_id, lambda s: sum(t.ended for t in s.trials.values()) >= 2,
                     timeout=120)
    stack.kill("tuner")  # SIGKILL: the worker goes with its session; a new tuner rebuilds from storage
    stack.start("tuner")
    state = await wait_finished(stack, experiment_id, timeout=180)

    assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
    trials = sorted(state.trials.values(), key=lambda t: t.sequence_id)
    assert len(trials) == 6
    assert all(abs(t.parameters["x"] - 0.2 * t.sequence_id) < 1e-9 for t in trials), trials
    for trial in trials:
        expected = "EARLY_STOPPED" if trial.parameters["x"] < 0.5 else "SUCCEEDED"
        assert trial.status == expected, (trial, stack.log("tuner-0"), stack.log("tuner-1"))
    assert "rebuilt" in stack.log("tuner-1")


def _wire_config(name: str) -> dict[str, Any]:
    trial = "import nni; p = nni.get_next_parameter(); nni.report_final_result(p['x'])"
    return {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 10]}},
        "trialCommand": f'python3 -c "{trial}"',
        "trialConcurrency": 2,
        "maxTrialNumber": 4,
        "maxExperimentDuration": "5m",
        "tuner": {"className": "walker.Walker", "classArgs": {"optimize_mode": "maximize", "step": 0.001}},
        "trainingService": {"platform": "local"},
    }


async def _start_with_code(stack: Stack, tuner_dir: Path) -> str:
    """Store the tuner's code and publish the start, as any program may (no CLI)."""
    experiment_id = f"ct{tuner_dir.name}{uuid.uuid4().hex[:6]}"
    blob = Layout(experiment_id).algorithm_code_archive("tuner")
    async with BlobStore(stack.env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                         stack.env["TUNEBUS_STORAGE_CONTAINER"]) as store:
        await store.write_bytes(blob, build_code_archive(tuner_dir))
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=_wire_config(tuner_dir.name),
                                         algorithm_code={"tuner": blob}))
    return experiment_id


def _own_offsets(state: ExperimentState, offset: float) -> bool:
    return all(abs(t.parameters["x"] - offset - 0.001 * t.sequence_id) < 1e-9 and
               t.final_value == t.parameters["x"] for t in state.trials.values())


async def test_raising_hanging_and_leaking_tuners_each_end_only_their_own_experiment(
    stack: Stack, tmp_path: Path,
) -> None:
    stack.kill("tuner", sig=signal.SIGTERM)
    stack.start("tuner", TUNEBUS_CUSTOM_CALL_TIMEOUT=str(CALL_LIMIT),
                TUNEBUS_CUSTOM_MEMORY_LIMIT_MB=str(MEMORY_LIMIT_MB))
    bad = {
        "raises": "if parameter_id >= 2: raise ValueError('bad point ' + str(parameter_id))",
        "hangs": "import time; time.sleep(3600)",
        "leaks": "self.__dict__.setdefault('hoard', []).append(bytearray(150 * 2**20))",
    }
    bad_ids = {name: await _start_with_code(stack, _walker(tmp_path / name, body))
               for name, body in bad.items()}
    good_id = await _start_with_code(stack, _walker(tmp_path / "good", offset=2.0))
    host_path = {**_wire_config("host"), "tuner": {"className": "evil.Tuner", "codeDirectory": "/etc"}}
    host_id = f"host{uuid.uuid4().hex[:6]}"
    await publish(stack, ExperimentStart(experiment_id=host_id, config=host_path))

    done = await wait_finished(stack, good_id, timeout=120)
    assert done.status == "DONE" and len(done.trials) == 4 and _own_offsets(done, 2.0), done.reason
    reasons = {}
    for name, experiment_id in bad_ids.items():
        state = await wait_finished(stack, experiment_id, timeout=CALL_LIMIT + 90)
        assert state.status == "ERROR", f"{name}: {state.reason}\n{stack.logs()}"
        reasons[name] = state.reason or ""
    prefix = "tuner: custom tuner 'walker.Walker': generate_parameters"
    assert reasons["raises"].startswith(f"{prefix} failed:\nTraceback"), reasons["raises"]
    assert "walker.py" in reasons["raises"] and "ValueError: bad point 2" in reasons["raises"]
    assert reasons["hangs"].startswith(f"{prefix} did not return within {CALL_LIMIT:g} s"), reasons["hangs"]
    assert reasons["leaks"].startswith(prefix), reasons["leaks"]
    assert "MemoryError" in reasons["leaks"] or "out of memory" in reasons["leaks"], reasons["leaks"]

    refused = await wait_finished(stack, host_id, timeout=60)
    assert refused.status == "ERROR" and "a start message cannot name a folder" in (refused.reason or "")


def test_the_custom_tuner_example_runs_through_the_cli(stack: Stack, tmp_path: Path) -> None:
    """examples/custom-tuner: an NNI-style hill-climbing tuner and median assessor, unchanged."""
    from tests.conftest import REPO_ROOT

    example = tmp_path / "custom-tuner"
    shutil.copytree(REPO_ROOT / "examples" / "custom-tuner", example)
    summary = stack.create(example / "config.yml", timeout=280)
    assert summary["status"] == "DONE", stack.logs()
    counts = summary["trials"]
    assert isinstance(counts, dict) and sum(counts.values()) == 12
    assert set(counts) <= {"SUCCEEDED", "EARLY_STOPPED"}, counts
    best = summary["best"]
    assert isinstance(best, dict) and set(best["parameters"]) == {"x", "y", "steps"}
    assert best["value"] > -0.25  # the optimum is 0; the worst corner of the square is -0.98
