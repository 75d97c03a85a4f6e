"""Any service may be SIGKILLed at any moment: the experiment still ends DONE with exactly
maxTrialNumber trials, none counted twice."""

from __future__ import annotations

import signal
import uuid

import pytest

from shared.messages import ExperimentStart, TrialStatus
from tests.e2e.conftest import SERVICES, Stack, publish, wait_finished, wait_until

pytestmark = pytest.mark.e2e

MAX_TRIALS = 8
TRIAL = (
    "import time, nni; p = nni.get_next_parameter(); "
    "nni.report_intermediate_result(p['x']); time.sleep(0.6); "
    "nni.report_final_result(p['x'])"
)


def _config() -> dict[str, object]:
    return {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": f'python3 -c "{TRIAL}"',
        "trialConcurrency": 2,
        "maxTrialNumber": MAX_TRIALS,
        "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
    }


@pytest.mark.parametrize("victim", SERVICES)
async def test_sigkill_mid_experiment_loses_and_doubles_nothing(stack: Stack, victim: str) -> None:
    experiment_id = f"kill{uuid.uuid4().hex[:8]}"
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=_config()))
    # Mid-experiment: some trials ended, some running.
    await wait_until(stack, experiment_id,
                     lambda s: sum(t.ended for t in s.trials.values()) >= 2 and s.running(), timeout=60)
    stack.kill(victim, sig=signal.SIGKILL)
    stack.start(victim)

    state = await wait_finished(stack, experiment_id, timeout=120)
    assert state.status == "DONE", f"{state.reason}\n{stack.logs()}"
    assert len(state.trials) == MAX_TRIALS
    assert sorted(t.sequence_id for t in state.trials.values()) == list(range(MAX_TRIALS))
    assert all(t.status == TrialStatus.SUCCEEDED for t in state.trials.values()), state.trials_by_status()
    assert all(t.final_value == pytest.approx(t.parameters["x"]) for t in state.trials.values())
