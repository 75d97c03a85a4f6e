"""What the dashboard computes from a state document (pure): aggregates that stay bounded and
exact where it matters, parameter axes, the command messages its buttons publish, and where it
listens in compose."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.dashboard import actions, views
from services.dashboard.settings import DashboardSettings, is_loopback
from shared.messages import ExperimentStatus, ExperimentUpdate, TrialStatus, TrialStopRequested
from tests.conftest import REPO_ROOT
from tests.dashboard.data import SEARCH_SPACE, synthetic_state


def test_the_downsampled_scatter_keeps_every_improvement_and_each_buckets_extremes() -> None:
    state = synthetic_state("e", 5000, running=0)
    series = views.metric_series(state, max_points=400)
    scored = [t for t in state.by_sequence() if t.final_value is not None]
    assert series["downsampled"] and series["scored"] == len(scored)
    shown = dict(zip(series["scatter"]["trial_id"], series["scatter"]["value"], strict=True))
    assert len(shown) <= 400 + len(series["best"]["sequence"])
    assert max(t.final_value for t in scored) in shown.values()  # type: ignore[type-var]
    assert min(t.final_value for t in scored) in shown.values()  # type: ignore[type-var]
    # The best-so-far curve is exact: every step is a real trial's value, never worse than before.
    best = series["best"]["value"]
    assert best == sorted(best) and best[-1] == max(t.final_value or -math.inf for t in scored)
    assert series["best"]["sequence"][-1] == scored[-1].sequence_id


def test_a_small_experiment_is_shown_whole_and_minimize_steps_down() -> None:
    state = synthetic_state("e", 30, running=0)
    state.optimize_mode = "minimize"
    series = views.metric_series(state)
    assert not series["downsampled"]
    scored = sum(1 for t in state.trials.values() if t.final_value is not None)
    assert len(series["scatter"]["sequence"]) == scored
    assert series["best"]["value"] == sorted(series["best"]["value"], reverse=True)


def test_parallel_coordinates_show_choices_and_log_scales_as_such() -> None:
    state = synthetic_state("e", 200, running=0)
    found = views.parallel_coordinates(state, SEARCH_SPACE, top_percent=20, max_lines=15)
    assert found["shown"] == 15 and found["scored"] > 100
    dims = {d["name"]: d for d in found["dimensions"]}
    assert dims["layers"]["ticktext"] == ["1", "2", "4"] and set(dims["layers"]["values"]) <= {0, 1, 2}
    lr = dims["lr"]
    assert lr["kind"] == "log" and all(-5 <= v <= -1 for v in lr["values"])
    assert lr["ticktext"][0].startswith("1e")
    scored = sorted((t.final_value for t in state.trials.values() if t.final_value is not None), reverse=True)
    assert found["metric"][0] == scored[0]  # the best is always among the lines
    assert min(found["metric"]) >= scored[math.ceil(len(scored) * 0.2) - 1]


def test_a_parameter_of_mixed_values_becomes_a_labelled_axis() -> None:
    state = synthetic_state("e", 3, running=0)
    for value, trial in zip([1, "auto", {"_name": "adam", "lr": 0.1}], state.by_sequence(), strict=True):
        trial.parameters = {"opt": value}
    dims = views.parallel_coordinates(state, {})["dimensions"]
    assert dims[0]["kind"] == "choice" and set(dims[0]["ticktext"]) <= {"1", "auto", "adam"}


def test_sorting_by_a_parameter_puts_numbers_before_text_and_missing_last() -> None:
    state = synthetic_state("e", 4, running=0)
    for value, trial in zip([3, "b", None, 1], state.by_sequence(), strict=True):
        trial.parameters = {} if value is None else {"p": value}
    page = views.query_trials(views.TrialIndex.build(state), views.parse_trial_query({"sort": "param.p"}))
    assert [t["parameters"].get("p") for t in page["items"]] == [1, 3, "b", None]


def test_limits_changed_by_an_update_win_over_the_files() -> None:
    state = synthetic_state("e", 1)
    state.updated_limits = {"trialConcurrency": 5}
    limits = views.experiment_limits({"trialConcurrency": 2, "maxTrialNumber": 10}, state)
    assert limits == {"trialConcurrency": 5, "maxTrialNumber": 10, "maxExperimentDuration": None}
    summary = views.ExperimentSummary.of(state)
    row = views.experiment_row("e", summary, {"maxTrialNumber": 10}, datetime(2026, 1, 1, 1, tzinfo=UTC))
    assert row["trials_total"] == 1 and row["elapsed_seconds"] == 3600


def test_the_shown_config_masks_secrets_under_any_key() -> None:
    shown = views.shown_config({"sharedStorage": {"storageAccountKey": "abc"},
                                "note": "DefaultEndpointsProtocol=https;AccountKey=c2VjcmV0;"})
    assert shown["sharedStorage"]["storageAccountKey"] == "***"
    assert "c2VjcmV0" not in shown["note"]


def test_actions_are_refused_as_the_cli_refuses_them() -> None:
    done = synthetic_state("e", 2, running=0, status=ExperimentStatus.DONE)
    with pytest.raises(actions.ActionRefused, match="already ended"):
        actions.stop_command("e", done)
    assert actions.resume_command("e", done, has_config=True).ROUTING_KEY == "experiment.resume"
    with pytest.raises(actions.ActionRefused, match="never started"):
        actions.resume_command("e", synthetic_state("e", 0, running=0, status=ExperimentStatus.ERROR), False)
    with pytest.raises(actions.ActionRefused, match="has not started"):
        actions.resume_command("e", None, has_config=False)
    stopping = synthetic_state("e", 1, status=ExperimentStatus.STOPPING)
    with pytest.raises(actions.ActionRefused, match="STOPPING"):
        actions.update_command("e", stopping, {"maxTrialNumber": 3})


@pytest.mark.parametrize("body, problem", [
    ({}, "update"), ({"trialConcurrency": True}, "numbers"), ({"maxTrialNumber": 10**9}, "maxTrialNumber"),
    ({"maxExperimentDuration": "soon"}, "maxExperimentDuration"), ({"maxTrialNumber": "7"}, None),
])
def test_update_bodies_are_validated_naming_the_limit(body: dict[str, object], problem: str | None) -> None:
    state = synthetic_state("e", 1)
    if problem is None:
        update = actions.update_command("e", state, body)
        assert isinstance(update, ExperimentUpdate) and update.max_trial_number == 7
        return
    with pytest.raises(actions.ActionRefused, match=problem) as refused:
        actions.update_command("e", state, body)
    assert refused.value.status == 400


def test_kill_is_for_a_trial_that_has_not_ended() -> None:
    state = synthetic_state("e", 3, running=1)
    running, ended = state.by_sequence()[-1], state.by_sequence()[0]
    kill = actions.kill_command("e", state, running.trial_id)
    assert isinstance(kill, TrialStopRequested) and kill.status == TrialStatus.USER_CANCELED
    with pytest.raises(actions.ActionRefused, match="already ended"):
        actions.kill_command("e", state, ended.trial_id)
    with pytest.raises(actions.ActionRefused) as unknown:
        actions.kill_command("e", state, "nosuch")
    assert unknown.value.status == 404


def test_loopback_is_the_default_and_a_token_is_checked() -> None:
    assert DashboardSettings().dashboard_host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    assert DashboardSettings(dashboard_token="").dashboard_token is None  # compose's unset variable


def test_compose_publishes_the_dashboard_on_loopback_only() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["dashboard"]
    assert compose["command"][-1] == "services.dashboard"
    assert compose["ports"] and all(p.startswith("127.0.0.1:") for p in compose["ports"])


def test_deploy_local_url_follows_the_port_and_keeps_one_private_token(tmp_path: Path) -> None:
    env = {**os.environ, "TUNEBUS_LOCAL_DIR": str(tmp_path / "local"), "TUNEBUS_DASHBOARD_PORT": "18123",
           "TUNEBUS_PYTHON": sys.executable}
    urls = [subprocess.run([str(REPO_ROOT / "deploy" / "local"), "url"], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip() for _ in range(2)]
    assert urls[0] == urls[1] and urls[0].startswith("http://127.0.0.1:18123/?token=")
    assert len(urls[0].split("token=")[1]) >= 32
    token_file = tmp_path / "local" / "credentials" / "dashboard-token"
    assert token_file.stat().st_mode & 0o077 == 0
