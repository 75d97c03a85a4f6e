"""Custom tuners and assessors: loaded per experiment, each call off the event loop and bounded in
time; a raising or hanging one ends its own experiment in ERROR, and no other waits on it."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from services.tuner.algorithms import TunerConfigError, create_tuner
from services.tuner.assessors import AssessResult, create_assessor
from services.tuner.calls import AlgorithmFailed, GuardedCalls, abandoned_threads
from services.tuner.service import TunerService
from shared.layout import Layout
from shared.messages import ExperimentError, SuggestRequest, TrialSuggested
from tests.integration.fakes import RecordingBus

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}}

TUNER = '''
from helper import OFFSET

class Tuner:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def update_search_space(self, search_space):
        pass

    def generate_parameters(self, parameter_id, **kwargs):
        {body}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        pass
'''


def write_tuner(folder: Path, body: str = "return {'x': OFFSET}", offset: float = 0.0,
                module: str = "my_tuner") -> Path:
    """A custom tuner module ``module.Tuner`` in ``folder``, with a sibling module ``helper``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(TUNER).replace("{body}", body))
    (folder / "helper.py").write_text(f"OFFSET = {offset}\n")
    return folder


# ---------------------------------------------------------------- loading per experiment


def test_same_named_modules_in_two_code_directories_each_run_their_own_code(tmp_path: Path) -> None:
    path_before, modules_before = list(sys.path), set(sys.modules)
    first = create_tuner(None, {}, SPACE, class_name="my_tuner.Tuner",
                         code_directory=str(write_tuner(tmp_path / "a", offset=0.25)))
    second = create_tuner(None, {}, SPACE, class_name="my_tuner.Tuner",
                          code_directory=str(write_tuner(tmp_path / "b", offset=0.75)))
    # Each sees its own sibling `helper` too, as NNI users expect of their code directory.
    assert first.generate_parameters(0) == {"x": 0.25}
    assert second.generate_parameters(0) == {"x": 0.75}
    assert sys.path == path_before, "no import path left behind"
    assert not {"my_tuner", "helper"} & (set(sys.modules) - modules_before)


def test_loading_the_same_directory_again_reads_the_code_again(tmp_path: Path) -> None:
    folder = write_tuner(tmp_path / "a", offset=0.1)
    assert create_tuner(None, {}, SPACE, class_name="my_tuner.Tuner",
                        code_directory=str(folder)).generate_parameters(0) == {"x": 0.1}
    (folder / "helper.py").write_text("OFFSET = 0.9\n")  # the user fixed their code and resubmitted
    assert create_tuner(None, {}, SPACE, class_name="my_tuner.Tuner",
                        code_directory=str(folder)).generate_parameters(0) == {"x": 0.9}


def test_a_module_already_imported_under_that_name_is_neither_used_nor_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = types.ModuleType("helper")
    monkeypatch.setitem(sys.modules, "helper", elsewhere)
    tuner = create_tuner(None, {}, SPACE, class_name="my_tuner.Tuner",
                         code_directory=str(write_tuner(tmp_path, offset=0.5)))
    assert tuner.generate_parameters(0) == {"x": 0.5}  # the code directory's helper, not the other
    assert sys.modules["helper"] is elsewhere


def test_a_custom_assessor_is_loaded_and_nni_style_answers_are_read(tmp_path: Path) -> None:
    (tmp_path / "my_assessor.py").write_text(textwrap.dedent('''
        import enum

        class AssessResult(enum.Enum):  # what NNI's nni.assessor.AssessResult looks like
            Good = True
            Bad = False

        class Stopper:
            def __init__(self, below):
                self.below = below

            def assess_trial(self, trial_job_id, trial_history):
                return AssessResult.Bad if trial_history[-1] < self.below else AssessResult.Good
    '''))
    assessor = create_assessor(None, {"below": 0.5}, class_name="my_assessor.Stopper",
                               code_directory=str(tmp_path))
    assert assessor.assess_trial("t1", [0.9, 0.2]) == AssessResult.Bad
    assert assessor.assess_trial("t1", [0.9]) == AssessResult.Good
    assessor.trial_end("t1", True)  # NNI's default when the class has none: nothing


def test_import_errors_name_the_class(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    with pytest.raises(TunerConfigError, match=r"broken\.Tuner.*cannot load.*no_such_module_here"):
        create_tuner(None, {}, None, class_name="broken.Tuner", code_directory=str(tmp_path))


# ---------------------------------------------------------------- guarded calls


async def test_a_raising_call_fails_with_the_traceback_tail() -> None:
    def user_code() -> None:
        raise KeyError("no such parameter 'lr'")

    calls = GuardedCalls("e1", limit=5)
    with pytest.raises(AlgorithmFailed) as info:
        await calls.run("custom tuner 'my.T': generate_parameters", user_code)
    reason = info.value.reason
    assert reason.startswith("custom tuner 'my.T': generate_parameters failed:\nTraceback")
    assert "in user_code" in reason and reason.endswith("KeyError: \"no such parameter 'lr'\"")
    assert await calls.run("next call", lambda: 42) == 42  # one failure does not wedge the thread
    calls.close()


async def test_a_hanging_call_fails_within_its_limit_and_the_loop_keeps_running() -> None:
    import threading

    release = threading.Event()
    calls = GuardedCalls("e1", limit=0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    abandoned = abandoned_threads()
    started = time.monotonic()
    with pytest.raises(AlgorithmFailed, match=r"did not return within 0\.5 s"):
        await calls.run("custom tuner 'my.T': generate_parameters", lambda: release.wait(60))
    assert time.monotonic() - started < 3
    assert ticks >= 10, "the event loop ran while the call hung"
    assert abandoned_threads() == abandoned + 1
    with pytest.raises(AlgorithmFailed, match="an earlier call never returned"):
        await calls.run("again", lambda: 1)
    ticking.cancel()
    release.set()
    calls.close()


# ---------------------------------------------------------------- the service


class _Store:
    def __init__(self, docs: dict[str, object]) -> None:
        self.docs = docs

    async def read_json(self, path: str) -> tuple[object, str] | None:
        return (self.docs[path], "etag") if path in self.docs else None


def _service(
    tmp_path: Path, experiments: dict[str, str], limit: float = 5.0
) -> tuple[TunerService, RecordingBus]:
    """A tuner service whose experiments have custom tuners with these generate_parameters bodies."""
    docs: dict[str, object] = {}
    for experiment_id, body in experiments.items():
        folder = write_tuner(tmp_path / experiment_id, body)
        config = {"searchSpace": SPACE, "trialConcurrency": 1,
                  "tuner": {"className": "my_tuner.Tuner", "codeDirectory": str(folder)}}
        docs[Layout(experiment_id).experiment_doc] = {"config": config}
    bus = RecordingBus()
    return TunerService(bus, _Store(docs), custom_call_timeout=limit), bus  # type: ignore[arg-type]


async def test_a_raising_tuner_errors_its_experiment_and_not_the_other(tmp_path: Path) -> None:
    service, bus = _service(tmp_path, {"bad": "return {'x': 1 / 0}", "good": "return {'x': OFFSET}"})
    handle = service.handlers()[SuggestRequest]
    await handle(SuggestRequest(experiment_id="bad", parameter_ids=[0]))
    await handle(SuggestRequest(experiment_id="good", parameter_ids=[0]))
    error, answer = bus.published
    assert isinstance(error, ExperimentError) and error.experiment_id == "bad" and error.service == "tuner"
    assert error.reason.startswith("custom tuner 'my_tuner.Tuner': generate_parameters failed:\n")
    assert "ZeroDivisionError: division by zero" in error.reason and "my_tuner.py" in error.reason
    assert isinstance(answer, TrialSuggested) and answer.experiment_id == "good"
    await handle(SuggestRequest(experiment_id="bad", parameter_ids=[1]))
    assert len(bus.published) == 2, "a failed experiment's later requests build nothing"


async def test_a_hanging_tuner_does_not_hold_up_another_experiment(tmp_path: Path) -> None:
    service, bus = _service(tmp_path, {"stuck": "import time; time.sleep(3600)",
                                       "good": "return {'x': OFFSET}"}, limit=2.0)
    handle = service.handlers()[SuggestRequest]
    stuck = asyncio.create_task(handle(SuggestRequest(experiment_id="stuck", parameter_ids=[0])))
    await asyncio.sleep(0.2)  # the stuck call is in progress
    started = time.monotonic()
    await handle(SuggestRequest(experiment_id="good", parameter_ids=[0, 1]))
    assert time.monotonic() - started < 1.5, "the other experiment waited on the stuck one"
    assert [m.experiment_id for m in bus.published] == ["good", "good"]
    await asyncio.wait_for(stuck, 10)
    [error] = [m for m in bus.published if isinstance(m, ExperimentError)]
    assert error.experiment_id == "stuck" and "did not return within 2 s" in error.reason


async def test_a_tuner_whose_constructor_raises_errors_its_experiment(tmp_path: Path) -> None:
    service, bus = _service(tmp_path, {"e1": "return {}"})
    folder = tmp_path / "e1"
    (folder / "my_tuner.py").write_text((folder / "my_tuner.py").read_text().replace(
        "self.kwargs = kwargs", "raise RuntimeError('needs a GPU: AccountKey=abc123secret;')"))
    await service.handlers()[SuggestRequest](SuggestRequest(experiment_id="e1", parameter_ids=[0]))
    [error] = bus.published
    assert isinstance(error, ExperimentError)
    assert error.reason.startswith("loading custom tuner 'my_tuner.Tuner' failed:")
    assert "RuntimeError: needs a GPU" in error.reason and "abc123secret" not in error.reason


