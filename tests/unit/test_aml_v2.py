"""The SDK v2 (azure-ai-ml) backend: the real command job, and the backend through the v2 stand-in.

The stand-in sits at the ``MLClient`` boundary (NOT Azure): it receives the real
``azure.ai.ml`` command job and raises azure-core's own exception classes, so the backend's v2
path — look-ups, adoption, error classification, confirmed cancels — runs as it would on Azure.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aml_standin import v1 as standin
from aml_standin.v2 import StandinMLClient
from services.aml_submitter.aml.backend import AmlBackend
from services.aml_submitter.aml.job import RUN_SCRIPT, AmlTarget, build_snapshot
from services.aml_submitter.aml.options import AmlOptions, RetryPolicy
from services.aml_submitter.aml.sdk import standin_v2_api
from services.aml_submitter.backend import PermanentSubmitError
from shared.messages import Ticket, TrialHeartbeat, TrialKill, TrialStatus, TrialStatusChanged
from shared.storage import Layout
from tests.unit.test_aml_backend import EXP, Harness, MemoryStore, _job, _running

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml (the aml extra) is not installed")

RUN_ID = "tunebus_dep1_exp1_tr1_1"


def _make(tmp_path: Path, **options: Any) -> Harness:
    settings = standin.StandinSettings(registry=tmp_path / "registry", queue_delay=0.05, prepare_delay=0.05)
    store = MemoryStore()
    harness: Harness

    class CountingClient(StandinMLClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            create = self.jobs.create_or_update

            def counted(job: Any) -> Any:
                harness.submits += 1
                return create(job)

            self.jobs.create_or_update = counted  # type: ignore[method-assign]

    def api() -> SimpleNamespace:
        from functools import partial

        from services.aml_submitter.aml.v2 import v2_api

        assert standin_v2_api(settings).sdk == "v2"
        return v2_api(partial(CountingClient, settings=settings), standin=True)

    async def report(msg: TrialStatusChanged | TrialHeartbeat) -> None:
        if not isinstance(msg, TrialHeartbeat):  # the watch's heartbeats: not status reports
            harness.reports.append(msg)

    async def publish_ticket(ticket: Ticket) -> None:
        harness.tickets.append(ticket)

    opts = AmlOptions(poll_seconds=0.05, retry=RetryPolicy(attempts=4, base=0.01, cap=0.05), **options)
    backend = AmlBackend(store=store, report=report, publish_ticket=publish_ticket,  # type: ignore[arg-type]
                         work_dir=tmp_path / "work", api=api, env={}, options=opts, deployment_id="dep1")
    harness = Harness(backend, store)
    return harness


def _runs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "registry").iterdir() if p.is_dir())


def test_the_command_job_is_azure_ai_mls_own(tmp_path: Path) -> None:
    from azure.ai.ml.entities import Command

    from services.aml_submitter.aml.v2 import build_command_job

    job = _job("python3 trial.py")
    job.config["maxTrialDuration"] = 600
    snapshot = build_snapshot(job, tmp_path / "snap")
    built = build_command_job(job, AmlTarget.from_config(job.config), snapshot)
    assert isinstance(built, Command)
    assert built.command == f"bash {RUN_SCRIPT}" and built.code == str(snapshot)
    assert built.environment.image == "msranni/nni" and built.compute == "cpu-cluster"
    assert built.experiment_name == "tunebus-exp1"
    assert built.limits.timeout == 600 + 3600  # past tunebus's own limit
    env = built.environment_variables
    assert env["NNI_TRIAL_JOB_ID"] == "tr1" and env["NNI_PLATFORM"] == "aml"
    assert (snapshot / RUN_SCRIPT).read_text().rstrip().endswith("python3 trial.py")


async def test_a_trial_runs_to_success_through_the_v2_stand_in(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("true"))
    waiting = h.reports[0]
    assert waiting.status == TrialStatus.WAITING
    assert waiting.job_url == f"standin://not-azure/v2/ws/jobs/{RUN_ID}"
    end = await h.drive()
    assert end.status == TrialStatus.SUCCEEDED and end.backend_status == "Completed"
    tags = standin.Run.get(standin.Workspace("", "", "ws", settings=standin.StandinSettings(
        tmp_path / "registry")), RUN_ID).get_tags()
    assert tags["tunebus.deployment"] == "dep1" and tags["tunebus.trial_id"] == "tr1"


async def test_a_failed_job_reports_its_error(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("echo 'no GPU here' >&2; exit 2"))
    end = await h.drive()
    assert end.status == TrialStatus.FAILED and end.error and "no GPU here" in end.error


async def test_a_429_then_success(tmp_path: Path) -> None:
    h = _make(tmp_path)
    standin.inject_fault(tmp_path / "registry", "submit", 429)  # azure-core's HttpResponseError
    await h.backend.submit(_job("true"))
    assert h.submits == 2 and _runs(tmp_path) == [RUN_ID]


async def test_a_failure_after_the_job_exists_adopts_it(tmp_path: Path) -> None:
    h = _make(tmp_path)
    standin.inject_fault(tmp_path / "registry", "tags", 503)  # created, the answer lost
    await h.backend.submit(_job("true"))
    assert h.submits == 1 and _runs(tmp_path) == [RUN_ID]
    assert h.store.docs[Layout(EXP).trial_doc("tr1")][0]["runs"]["1"]["run_id"] == RUN_ID
    assert (await h.drive()).status == TrialStatus.SUCCEEDED


async def test_a_409_after_a_crash_between_submit_and_record(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("sleep 0.3"))
    del h.store.docs[Layout(EXP).trial_doc("tr1")]
    again = _make(tmp_path)
    standin.inject_fault(tmp_path / "registry", "get", 404)  # the look-up misses it: create → 409
    await again.backend.submit(_job("sleep 0.3"))
    assert again.submits == 1 and _runs(tmp_path) == [RUN_ID]
    assert (await again.drive()).status == TrialStatus.SUCCEEDED


async def test_an_unknown_compute_fails_the_trial(tmp_path: Path) -> None:
    h = _make(tmp_path)
    job = _job("true")
    job.config["trainingService"]["computeTarget"] = "gpu-huge"
    with pytest.raises(PermanentSubmitError, match=r"ResourceNotFoundError.*gpu-huge"):
        await h.backend.submit(job)
    assert h.submits == 0


async def test_a_cancel_that_does_not_take_is_sent_again(tmp_path: Path) -> None:
    h = _make(tmp_path, cancel_check_seconds=0.2)
    await h.backend.submit(_job("sleep 60"))
    await _running(h)
    standin.inject_fault(tmp_path / "registry", "cancel", times=1)
    await h.backend.on_kill(TrialKill(experiment_id=EXP, trial_id="tr1", status=TrialStatus.EARLY_STOPPED,
                                      reason="Medianstop"))
    end = await h.drive()
    assert (end.status, end.error) == (TrialStatus.EARLY_STOPPED, "Medianstop")
    assert end.backend_status == "Canceled"


async def test_a_credential_the_workspace_refuses_is_passed_over(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import HttpResponseError

    from services.aml_submitter.aml import client as client_module
    from services.aml_submitter.aml.auth import AuthMethod

    class Client(StandinMLClient):
        def __init__(self, credential: Any = None, *args: Any, **kwargs: Any) -> None:
            super().__init__(credential, *args, **kwargs)
            if credential == "msi":  # a token, but no role on the workspace
                def refuse(name: str) -> Any:
                    error = HttpResponseError(message=f"AuthorizationFailed on {name}")
                    error.status_code = 403
                    raise error
                self.workspaces.get = refuse  # type: ignore[method-assign]

    real_resolve = client_module.resolve_auth
    methods = [AuthMethod("msi", lambda env: "msi"), AuthMethod("cli", lambda env: "cli")]
    monkeypatch.setattr(client_module, "resolve_auth",
                        lambda env, **kw: real_resolve(env, **{**kw, "methods": methods}))
    h = _make(tmp_path)
    from functools import partial

    from services.aml_submitter.aml.v2 import v2_api

    settings = standin.StandinSettings(registry=tmp_path / "registry")
    h.backend.client._api = v2_api(partial(Client, settings=settings), standin=False)
    await h.backend.submit(_job("true"))
    assert h.backend.client._auth == "cli"
