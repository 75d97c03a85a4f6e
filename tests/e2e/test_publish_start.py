"""Any program can start an experiment by publishing ``experiment.start``: no CLI involved."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aio_pika
import pytest

from shared.messages import ExperimentResume, ExperimentStart
from tests.e2e.conftest import Stack, publish, wait_finished

pytestmark = pytest.mark.e2e

TRIAL = (
    "import nni; p = nni.get_next_parameter(); "
    "nni.report_intermediate_result(p['x'] / 2); "
    "nni.report_final_result({'default': p['x'], 'y': p['y']})"
)


def _config(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]},
                        "y": {"_type": "randint", "_value": [0, 3]}},
        "trialCommand": f'python3 -c "{TRIAL}"',
        "trialConcurrency": 2,
        "maxTrialNumber": 4,
        "tuner": {"name": "Random", "classArgs": {"seed": 3}},
        "trainingService": {"platform": "local"},
    }
    config.update(overrides)
    return config


async def test_published_start_runs_to_done(stack: Stack) -> None:
    experiment_id = f"pub{uuid.uuid4().hex[:8]}"
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=_config()))
    state = await wait_finished(stack, experiment_id)

    assert state.status == "DONE", state.reason
    assert len(state.trials) == 4
    assert {t.status for t in state.trials.values()} == {"SUCCEEDED"}
    for trial in state.trials.values():
        assert trial.final_value == pytest.approx(trial.parameters["x"])
        assert trial.last_intermediate == pytest.approx(trial.parameters["x"] / 2)
        assert trial.metric_count == 2
        assert 0 <= trial.parameters["y"] < 3
    assert sorted(t.sequence_id for t in state.trials.values()) == [0, 1, 2, 3]


async def _next_dead_letter(stack: Stack) -> tuple[str, str, bytes]:
    """The next message in the dead-letter queue (acked): its routing key, reason and body."""
    connection = await aio_pika.connect(stack.env["TUNEBUS_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue("tunebus.dead-letter")
        # basic.get answers at once: wait (bounded) for the service to have dead-lettered it.
        deadline = time.monotonic() + 30
        while (message := await queue.get(timeout=10, fail=False)) is None:
            assert time.monotonic() < deadline, "no dead letter within 30 s"
            await asyncio.sleep(0.1)
        await message.ack()
        return message.routing_key or "", str((message.headers or {})["x-tunebus-reason"]), message.body


async def test_invalid_start_is_dead_lettered_with_reason_and_recorded(stack: Stack) -> None:
    experiment_id = f"bad{uuid.uuid4().hex[:8]}"
    bad = _config(trialConcurrency=0)
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=bad))
    state = await wait_finished(stack, experiment_id, timeout=30)
    assert state.status == "ERROR"
    assert "trialConcurrency" in (state.reason or "")

    key, reason, body = await _next_dead_letter(stack)
    assert "trialConcurrency" in reason and json.loads(body)["experiment_id"] == experiment_id
    # Its start was rejected: there is nothing to resume (the config must be fixed and created again).
    refused = stack.cli("resume", experiment_id)
    assert refused.returncode == 2 and "trialConcurrency" in refused.stderr, refused.stderr
    await publish(stack, ExperimentResume(experiment_id=experiment_id))  # as a program might
    key, reason, _ = await _next_dead_letter(stack)
    assert key == "experiment.resume" and "never started" in reason
    # The dispatcher is still there: a valid experiment still runs.
    good_id = f"pub{uuid.uuid4().hex[:8]}"
    await publish(stack, ExperimentStart(experiment_id=good_id, config=_config(maxTrialNumber=1)))
    assert (await wait_finished(stack, good_id)).status == "DONE"
    # A built-in algorithm's bad argument (`tunebus create` would refuse it; a program may not
    # check): the experiment ends in ERROR naming it.
    args_id = f"args{uuid.uuid4().hex[:8]}"
    sideways = _config(tuner={"name": "TPE", "classArgs": {"optimize_mode": "sideways"}})
    await publish(stack, ExperimentStart(experiment_id=args_id, config=sideways))
    state = await wait_finished(stack, args_id, timeout=60)
    assert state.status == "ERROR" and "optimize_mode" in (state.reason or ""), state.reason


async def test_at_max_experiment_duration_running_trials_finish_and_no_new_one_starts(stack: Stack) -> None:
    # NNI's semantics: time's up means NO_MORE_TRIAL; the two running trials end normally.
    experiment_id = f"dur{uuid.uuid4().hex[:8]}"
    slow = "import time, nni; p = nni.get_next_parameter(); time.sleep(4); nni.report_final_result(p['x'])"
    config = _config(trialCommand=f'python3 -c "{slow}"', maxTrialNumber=10,
                     maxExperimentDuration="2s")
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=config))
    state = await wait_finished(stack, experiment_id, timeout=60)
    assert state.status == "DONE", state.reason
    assert state.reason == "maxExperimentDuration reached"
    assert [t.status for t in state.trials.values()] == ["SUCCEEDED", "SUCCEEDED"]
    assert all(t.final_value is not None for t in state.trials.values())
    assert state.ended_at is not None and (state.ended_at - state.started_at).total_seconds() >= 4
