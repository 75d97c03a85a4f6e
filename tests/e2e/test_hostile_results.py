"""A trial that writes garbage through its own results URL ends FAILED with the reason, through the
real services; the experiment still ends DONE, and an honest trial next to it counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.messages import TrialStatus
from tests.e2e.conftest import Stack, wait_finished, write_experiment

pytestmark = pytest.mark.e2e

TRIAL = """import os, urllib.request
import nni
params = nni.get_next_parameter()
if nni.get_sequence_id() == 0:
    garbage = (b'{"sequence":0,"kind":"PERIODICAL","value":1' + b"0" * 400 + b'}\\n'
               + b'{"sequence":1,"kind":"PERIODICAL","value":' + b"[" * 20000 + b"]" * 20000 + b'}\\n'
               + b'{"sequence":2,"kind":"FINAL","value":NaN}\\n')
    request = urllib.request.Request(os.environ["TUNEBUS_METRICS_URL"] + "&comp=appendblock", data=garbage,
                                     method="PUT", headers={"x-ms-version": "2021-08-06"})
    urllib.request.urlopen(request).read()
else:
    nni.report_final_result(params["x"])
"""


async def test_garbage_results_fail_their_trial_and_the_experiment_ends(stack: Stack, tmp_path: Path) -> None:
    config = write_experiment(tmp_path, TRIAL, trialConcurrency=1, maxTrialNumber=2, tuner={"name": "Random"})
    created = stack.cli("create", "--config", str(config), "--json")
    assert created.returncode == 0, created.stderr
    experiment_id = json.loads(created.stdout.strip().splitlines()[-1])["id"]
    state = await wait_finished(stack, experiment_id)
    assert state.status == "DONE"
    hostile, honest = state.by_sequence()
    assert hostile.status == TrialStatus.FAILED and hostile.final_value is None
    error = hostile.error or ""
    assert "too large for a float" in error and "nested too deeply" in error and "not finite" in error, error
    assert honest.status == TrialStatus.SUCCEEDED and honest.final_value is not None
