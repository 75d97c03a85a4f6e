"""Several dispatcher and tuner replicas through the real services: they share the experiments
(each replica serves some), each experiment's trials stay in order and complete, losing a
replica hands its shards to the other; and a slow custom tuner slows only its own experiment."""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.code_archive import build_code_archive
from shared.messages import ExperimentStart, ExperimentStop
from shared.state import ExperimentState
from shared.storage import BlobStore, Layout
from tests.e2e.conftest import Stack, publish, read_state, wait_finished, wait_until

pytestmark = pytest.mark.e2e

TRIALS = 8
TRIAL = "import nni; p = nni.get_next_parameter(); nni.report_final_result(p['x'])"
SLOW_TUNER = '''
import time
from nni.tuner import Tuner


class Slow(Tuner):
    """Half a second a suggestion, as an expensive model would take."""

    def update_search_space(self, search_space):
        pass

    def generate_parameters(self, parameter_id, **kwargs):
        time.sleep(0.5)
        return {"x": 0.001 * parameter_id}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        pass
'''


def _config(trials: int, concurrency: int = 2, tuner: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": f'python3 -c "{TRIAL}"',
        "trialConcurrency": concurrency,
        "maxTrialNumber": trials,
        "maxExperimentDuration": "10m",
        "tuner": tuner or {"name": "Random"},
        "trainingService": {"platform": "local"},
    }


async def _wait_log(stack: Stack, name: str, pattern: str, timeout: float = 60) -> None:
    """Wait until ``name``'s log has a line matching ``pattern`` (an event the services log)."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, stack.log(name), re.MULTILINE):
        assert time.monotonic() < deadline, f"{name}: no {pattern!r} in {timeout} s:\n{stack.logs()}"
        await asyncio.sleep(0.1)


def _experiments_in_log(stack: Stack, name: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, stack.log(name)))


def _in_order(state: ExperimentState, trials: int) -> bool:
    """Every trial there, once each, numbered 0..n-1, none asked twice with the same parameters."""
    sequences = sorted(t.sequence_id for t in state.trials.values())
    values = {t.parameters["x"] for t in state.trials.values()}
    return sequences == list(range(trials)) and len(values) == trials


async def test_two_dispatchers_and_two_tuners_share_the_experiments_and_one_survives_the_others_loss(
        stack: Stack) -> None:
    stack.start("dispatcher")
    stack.start("tuner")
    for service in ("dispatcher", "tuner"):
        for index in (0, 1):  # both replicas see each other: the shards are shared out
            await _wait_log(stack, f"{service}-{index}", rf"{service} replicas now \S+, \S+;")
    ids = [f"rep{n:02d}{uuid.uuid4().hex[:4]}" for n in range(12)]
    for experiment_id in ids:
        await publish(stack, ExperimentStart(experiment_id=experiment_id, config=_config(trials=TRIALS)))
    await wait_until(stack, ids[-1], lambda s: any(t.ended for t in s.trials.values()), timeout=120)

    started = {i: _experiments_in_log(stack, f"dispatcher-{i}", r"experiment (\S+) started") for i in (0, 1)}
    built = {i: _experiments_in_log(stack, f"tuner-{i}", r"experiment (\S+): rebuilt") for i in (0, 1)}
    assert started[0] and started[1] and not started[0] & started[1], started
    assert built[0] and built[1], built

    # One replica of each goes (SIGKILL): the other takes its shards, every experiment finishes.
    stack.kill("dispatcher", 1)
    stack.kill("tuner", 0)
    rebuilt_before = _experiments_in_log(stack, "tuner-1", r"experiment (\S+): rebuilt")
    states = {e: await read_state(stack, e) for e in built[0]}
    # Those of the lost tuner still to be suggested for: only the survivor can answer them now.
    orphans = {e for e, s in states.items() if s is not None and len(s.trials) + len(s.ready) < TRIALS}
    for experiment_id in ids:
        state = await wait_finished(stack, experiment_id, timeout=240)
        assert state.status == "DONE", f"{experiment_id}: {state.reason}\n{stack.logs()}"
        assert _in_order(state, TRIALS), (experiment_id, state.trials)
    taken_over = _experiments_in_log(stack, "tuner-1", r"experiment (\S+): rebuilt") - rebuilt_before
    assert orphans <= taken_over | rebuilt_before, (orphans, taken_over)


async def _start_slow(stack: Stack, tmp_path: Path, trials: int) -> str:
    """Store the slow tuner's code and publish its experiment's start (as ``tunebus create`` would)."""
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "slow.py").write_text(textwrap.dedent(SLOW_TUNER))
    experiment_id = f"slow{uuid.uuid4().hex[:6]}"
    blob = Layout(experiment_id).algorithm_code_archive("tuner")
    async with BlobStore(stack.env["TUNEBUS_STORAGE_CONNECTION_STRING"],
                         stack.env["TUNEBUS_STORAGE_CONTAINER"]) as store:
        await store.write_bytes(blob, build_code_archive(folder))
    config = _config(trials, concurrency=2, tuner={"className": "slow.Slow"})
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=config,
                                         algorithm_code={"tuner": blob}))
    return experiment_id


async def test_a_slow_custom_tuner_slows_only_its_own_experiment(stack: Stack, tmp_path: Path) -> None:
    slow_trials = 40  # at 0.5 s a suggestion: 20 s of suggestions at the least
    slow = await _start_slow(stack, tmp_path, slow_trials)
    await wait_until(stack, slow, lambda s: len(s.trials) >= 1, timeout=120)  # its worker is up
    fast = [f"fast{n}{uuid.uuid4().hex[:4]}" for n in range(4)]
    for experiment_id in fast:
        await publish(stack, ExperimentStart(experiment_id=experiment_id, config=_config(trials=6)))
    for experiment_id in fast:
        state = await wait_finished(stack, experiment_id, timeout=180)
        assert state.status == "DONE" and _in_order(state, 6), (state.reason, state.trials)

    # Every fast one ended while the slow one was still far from its suggestions' end.
    slow_state = await read_state(stack, slow)
    assert slow_state is not None and not slow_state.finished, slow_state
    assert len(slow_state.trials) < slow_trials / 2, len(slow_state.trials)
    await publish(stack, ExperimentStop(experiment_id=slow))
    stopped = await wait_finished(stack, slow, timeout=120)
    assert stopped.status == "STOPPED", stopped.reason
    # Its suggestions came in order: parameter x is 0.001 * the parameter id, trial by trial.
    trials = sorted(stopped.trials.values(), key=lambda t: t.sequence_id)
    assert [t.sequence_id for t in trials] == list(range(len(trials)))
