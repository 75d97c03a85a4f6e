"""Custom tuners through the real services: each experiment runs its own code even when module
names collide, and one that raises or hangs ends its own experiment in ERROR with a reason while
another experiment runs on to DONE."""

from __future__ import annotations

import asyncio
import signal
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.messages import ExperimentStart
from shared.state import ExperimentState
from tests.e2e.conftest import Stack, publish, wait_finished

pytestmark = pytest.mark.e2e

CALL_LIMIT = 15.0  # TUNEBUS_CUSTOM_CALL_TIMEOUT for these tests

TUNER = '''
from helper import OFFSET

class Tuner:
    """Suggests x = OFFSET + parameter_id / 1000: which code ran is read off the parameters."""

    def __init__(self, optimize_mode="maximize"):
        self.seen = []

    def update_search_space(self, search_space):
        pass

    def generate_parameters(self, parameter_id, **kwargs):
        {body}
        return {{"x": OFFSET + parameter_id / 1000}}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        self.seen.append(value)
'''

TRIAL = "import nni; p = nni.get_next_parameter(); nni.report_final_result(p['x'])"


def _experiment(tmp_path: Path, name: str, offset: float, body: str = "pass") -> tuple[str, dict[str, Any]]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "my_tuner.py").write_text(textwrap.dedent(TUNER).format(body=body))
    (folder / "helper.py").write_text(f"OFFSET = {offset}\n")
    config = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 10]}},
        "trialCommand": f'python3 -c "{TRIAL}"',
        "trialConcurrency": 2,
        "maxTrialNumber": 4,
        "maxExperimentDuration": "5m",
        "tuner": {"className": "my_tuner.Tuner", "codeDirectory": str(folder),
                  "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
    }
    return f"ct{name}{uuid.uuid4().hex[:6]}", config


def _with_call_limit(stack: Stack) -> None:
    stack.kill("tuner", sig=signal.SIGTERM)
    stack.start("tuner", TUNEBUS_CUSTOM_CALL_TIMEOUT=str(CALL_LIMIT))


def _own_offsets(state: ExperimentState, offset: float) -> bool:
    return all(abs(t.parameters["x"] - offset - t.sequence_id / 1000) < 1e-9 and
               t.final_value == t.parameters["x"] for t in state.trials.values())


async def test_same_named_custom_tuners_each_run_their_own_code(stack: Stack, tmp_path: Path) -> None:
    first_id, first = _experiment(tmp_path, "a", offset=1.0)
    second_id, second = _experiment(tmp_path, "b", offset=2.0)
    await publish(stack, ExperimentStart(experiment_id=first_id, config=first))
    await publish(stack, ExperimentStart(experiment_id=second_id, config=second))
    for experiment_id, offset in ((first_id, 1.0), (second_id, 2.0)):
        state = await wait_finished(stack, experiment_id, timeout=120)
        assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
        assert len(state.trials) == 4 and _own_offsets(state, offset), state.trials


async def test_a_raising_custom_tuner_errors_its_experiment_and_the_other_is_done(
    stack: Stack, tmp_path: Path,
) -> None:
    bad_id, bad = _experiment(tmp_path, "bad", offset=1.0,
                              body="if parameter_id >= 2: raise ValueError('bad point ' + str(parameter_id))")
    good_id, good = _experiment(tmp_path, "good", offset=2.0)
    await publish(stack, ExperimentStart(experiment_id=bad_id, config=bad))
    await publish(stack, ExperimentStart(experiment_id=good_id, config=good))
    failed = await wait_finished(stack, bad_id, timeout=120)
    assert failed.status == "ERROR", f"{failed.reason}\n{stack.logs()}"
    reason = failed.reason or ""
    assert reason.startswith("tuner: custom tuner 'my_tuner.Tuner': generate_parameters failed:\n"), reason
    assert "my_tuner.py" in reason and "ValueError: bad point 2" in reason
    done = await wait_finished(stack, good_id, timeout=120)
    assert done.status == "DONE" and len(done.trials) == 4 and _own_offsets(done, 2.0), done.reason


async def test_a_hanging_custom_tuner_errors_within_the_limit_and_stalls_no_one(
    stack: Stack, tmp_path: Path,
) -> None:
    _with_call_limit(stack)
    stuck_id, stuck = _experiment(tmp_path, "stuck", offset=1.0, body="import time; time.sleep(3600)")
    good_id, good = _experiment(tmp_path, "good", offset=2.0)
    published = time.monotonic()
    await publish(stack, ExperimentStart(experiment_id=stuck_id, config=stuck))
    await asyncio.sleep(1)  # the stuck experiment's first request is in the tuner first
    await publish(stack, ExperimentStart(experiment_id=good_id, config=good))

    done = await wait_finished(stack, good_id, timeout=120)
    failed = await wait_finished(stack, stuck_id, timeout=CALL_LIMIT + 60)
    took = time.monotonic() - published
    assert failed.status == "ERROR", f"{failed.reason}\n{stack.logs()}"
    assert f"did not return within {CALL_LIMIT:g} s" in (failed.reason or "")
    assert took < CALL_LIMIT + 60
    assert done.status == "DONE" and len(done.trials) == 4 and _own_offsets(done, 2.0), done.reason
    # Not stalled: the other experiment's trials ran while the stuck call was still hanging.
    first_submitted = min(t.submitted_at for t in done.trials.values() if t.submitted_at)
    assert failed.ended_at is not None and first_submitted < failed.ended_at
    assert "abandoned" in stack.log("tuner-1")
