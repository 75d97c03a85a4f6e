"""The AML backend against the stand-in, with an in-memory blob store: submit, retry, watch, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aml_standin import v1 as standin
from aml_standin.runner import read_json
from services.aml_submitter.aml.backend import AmlBackend
from services.aml_submitter.aml.client import CancelNotConfirmedError
from services.aml_submitter.aml.options import AmlOptions, RetryPolicy
from services.aml_submitter.aml.sdk import standin_api
from services.aml_submitter.aml.status import failure_reason
from services.aml_submitter.backend import JobRequest, PermanentSubmitError, SubmitError
from services.aml_submitter.trial_env import TrialIdentity
from shared.bus import PermanentError
from shared.messages import Ticket, TrialHeartbeat, TrialKill, TrialStatus, TrialStatusChanged
from shared.storage import ConcurrentWriteError, Layout

pytest.importorskip("azureml.core", reason="azureml-core (the aml extra) is not installed")

EXP = "exp1"


class MemoryStore:
    """The part of BlobStore the AML backend uses, in memory, with ETag semantics."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[Any, str]] = {}
        self._n = 0

    async def read_json(self, path: str) -> tuple[Any, str] | None:
        return self.docs.get(path)

    async def write_json(self, path: str, doc: Any, *, etag: str | None = None,
                         create_only: bool = False) -> str:
        current = self.docs.get(path)
        if (create_only and current is not None) or (etag is not None and (current or (None, ""))[1] != etag):
            raise ConcurrentWriteError(path)
        self._n += 1
        self.docs[path] = (doc, str(self._n))
        return str(self._n)


class _HttpError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ComputeTargetException(Exception):
    """Named like azureml-core's."""


@dataclass
class Harness:
    backend: AmlBackend
    store: MemoryStore
    reports: list[TrialStatusChanged] = field(default_factory=list)
    heartbeats: list[TrialHeartbeat] = field(default_factory=list)
    tickets: list[Ticket] = field(default_factory=list)
    submits: int = 0

    async def drive(self, timeout: float = 20) -> TrialStatusChanged:
        """Handle watch tickets (as if their delay had passed) until the trial's end is reported."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.reports and self.reports[-1].status not in (TrialStatus.WAITING, TrialStatus.RUNNING):
                return self.reports[-1]
            assert self.tickets, "the watch chain stopped without an end"
            ticket = self.tickets.pop(0).model_copy(update={"due": datetime.now(UTC)})
            await self.backend.on_watch(ticket)
            await asyncio.sleep(0.02)
        raise AssertionError(f"no end reported: {self.reports}")


def _make(tmp_path: Path, *, submit_errors: list[Exception] | None = None,
          compute_error: Exception | None = None, **options: Any) -> Harness:
    settings = standin.StandinSettings(registry=tmp_path / "registry", queue_delay=0.05, prepare_delay=0.05)
    store = MemoryStore()
    errors = list(submit_errors or [])
    harness: Harness

    class Experiment(standin.Experiment):
        def submit(self, config: Any, tags: dict[str, str] | None = None,
                   run_id: str | None = None) -> standin.Run:
            harness.submits += 1
            if errors:
                raise errors.pop(0)
            return super().submit(config, tags=tags, run_id=run_id)

    class ComputeTarget(standin.ComputeTarget):
        def __init__(self, workspace: Any, name: str) -> None:
            if compute_error is not None:
                raise compute_error
            super().__init__(workspace, name)

    def api() -> SimpleNamespace:
        real = standin_api(settings)
        real.ComputeTarget, real.Experiment = ComputeTarget, Experiment
        return real

    async def report(msg: TrialStatusChanged | TrialHeartbeat) -> None:
        if isinstance(msg, TrialHeartbeat):
            harness.heartbeats.append(msg)
        else:
            harness.reports.append(msg)

    async def publish_ticket(ticket: Ticket) -> None:
        harness.tickets.append(ticket)

    opts = AmlOptions(poll_seconds=0.05, retry=RetryPolicy(attempts=4, base=0.01, cap=0.05), **options)
    backend = AmlBackend(store=store, report=report, publish_ticket=publish_ticket,  # type: ignore[arg-type]
                         work_dir=tmp_path / "work", api=api, env={}, options=opts,
                         deployment_id="dep1")
    harness = Harness(backend, store)
    return harness


def _job(command: str, trial_id: str = "tr1", attempt: int = 1) -> JobRequest:
    config = {
        "trialCommand": command, "trialConcurrency": 1,
        "trainingService": {"platform": "aml", "subscriptionId": "s", "resourceGroup": "r",
                            "workspaceName": "ws", "computeTarget": "cpu-cluster",
                            "dockerImage": "msranni/nni"},
    }
    return JobRequest(TrialIdentity(EXP, trial_id, 4, attempt), {"x": 1}, config, None,
                      "http://127.0.0.1:1/devstoreaccount1/c?sig=x")


async def test_submit_reports_waiting_records_the_run_and_watches_it_to_success(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("true"))
    waiting = h.reports[0]
    assert waiting.status == TrialStatus.WAITING and waiting.job_url
    assert waiting.job_url.startswith("standin://")
    doc = h.store.docs[Layout(EXP).trial_doc("tr1")][0]
    assert doc["platform"] == "aml" and doc["runs"]["1"]["run_id"] == "tunebus_dep1_exp1_tr1_1"
    assert h.tickets[0].purpose == "aml.watch" and h.tickets[0].state["run_id"] == "tunebus_dep1_exp1_tr1_1"
    end = await h.drive()
    assert end.status == TrialStatus.SUCCEEDED and end.error is None
    assert end.job_url == waiting.job_url and end.backend_status == "Completed"
    statuses = [r.status for r in h.reports]
    assert statuses.count(TrialStatus.RUNNING) <= 1  # RUNNING once at most
    assert statuses[-1] == TrialStatus.SUCCEEDED
    assert not h.tickets  # the chain stopped
    await h.backend.close()


async def test_a_watched_run_beats_once_a_heartbeat_period_so_a_lost_watch_shows(tmp_path: Path) -> None:
    h = _make(tmp_path, heartbeat_seconds=30.0)
    await h.backend.submit(_job("sleep 1"))
    checks = 0
    while h.tickets and checks < 5:
        await h.backend.on_watch(h.tickets.pop(0).model_copy(update={"due": datetime.now(UTC)}))
        checks += 1
    assert checks == 5 and h.tickets  # still running, watched
    assert [b.trial_ids for b in h.heartbeats] == [["tr1"]]  # one in the first 30 s, however many checks
    await h.drive()
    await h.backend.close()


async def test_a_failed_run_reports_amls_error(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("echo 'ModuleNotFoundError: torch' >&2; exit 1"))
    end = await h.drive()
    assert end.status == TrialStatus.FAILED
    assert end.error and "UserError" in end.error and "ModuleNotFoundError: torch" in end.error
    assert end.job_url and end.job_url.startswith("standin://")


async def test_transient_errors_are_retried_with_backoff(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    h = _make(tmp_path, submit_errors=[_HttpError("Too Many Requests", 429), ConnectionResetError("reset")])
    asked: list[float] = []
    slept: list[float] = []
    real_delay, real_sleep = RetryPolicy.delay, asyncio.sleep

    def delay(policy: RetryPolicy, attempt: int) -> float:
        asked.append(real_delay(policy, attempt))
        return asked[-1]

    async def sleep(seconds: float, *args: Any) -> Any:
        slept.append(seconds)
        return await real_sleep(seconds, *args)

    monkeypatch.setattr(RetryPolicy, "delay", delay)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    await h.backend.submit(_job("true"))
    assert h.submits == 3
    # Waited between attempts: the policy's back-off (0.01 s, then 0.02 s, ±20%), each slept.
    assert len(asked) == 2 and 0.008 <= asked[0] <= 0.012 and 0.016 <= asked[1] <= 0.024, asked
    assert all(seconds in slept for seconds in asked), (asked, slept)
    assert h.reports[0].status == TrialStatus.WAITING


async def test_transient_errors_that_go_on_become_a_submit_error(tmp_path: Path) -> None:
    h = _make(tmp_path, submit_errors=[_HttpError("Service Unavailable", 503)] * 10)
    with pytest.raises(SubmitError, match=r"503|Service Unavailable"):
        await h.backend.submit(_job("true"))
    assert h.submits == 4 and not h.reports and not h.tickets


async def test_a_permanent_error_is_not_retried(tmp_path: Path) -> None:
    h = _make(tmp_path, compute_error=ComputeTargetException("ComputeTargetNotFound: no compute 'cpu'"))
    with pytest.raises(PermanentSubmitError, match="ComputeTargetNotFound"):
        await h.backend.submit(_job("true"))
    h2 = _make(tmp_path / "2", submit_errors=[_HttpError("Bad Request: image name invalid", 400)])
    with pytest.raises(PermanentSubmitError, match="image name invalid"):
        await h2.backend.submit(_job("true"))
    assert h2.submits == 1


async def test_a_repeated_submission_finds_the_run_instead_of_making_another(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("sleep 0.3"))
    await h.backend.submit(_job("sleep 0.3"))  # e.g. redelivered after a crash
    runs = [p.name for p in (tmp_path / "registry").iterdir()]
    assert runs == ["tunebus_dep1_exp1_tr1_1"]
    assert [r.status for r in h.reports] == [TrialStatus.WAITING, TrialStatus.WAITING]


async def test_kill_cancels_the_run_and_the_watch_reports_the_kills_status(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("sleep 60"))
    while not any(r.status == TrialStatus.RUNNING for r in h.reports):
        ticket = h.tickets.pop(0).model_copy(update={"due": datetime.now(UTC)})
        await h.backend.on_watch(ticket)
    await h.backend.on_kill(TrialKill(experiment_id=EXP, trial_id="tr1", status=TrialStatus.EARLY_STOPPED,
                                      reason="Medianstop: below the median"))
    end = await h.drive()
    assert end.status == TrialStatus.EARLY_STOPPED
    assert end.backend_status == "Canceled" and end.error == "Medianstop: below the median"


async def test_a_kill_before_the_submission_means_no_run(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.store.write_json(Layout(EXP).experiment_doc, {"config": {"trainingService": {"platform": "aml"}}})
    await h.backend.on_kill(TrialKill(experiment_id=EXP, trial_id="tr1", status=TrialStatus.USER_CANCELED,
                                      reason="stopped by user"))
    await h.backend.submit(_job("touch ran"))
    assert h.submits == 0 and not h.tickets
    assert [(r.status, r.error) for r in h.reports] == [(TrialStatus.USER_CANCELED, "stopped by user")]


async def test_kills_of_local_trials_are_left_to_their_replica(tmp_path: Path) -> None:
    h = _make(tmp_path)
    local = {"config": {"trainingService": {"platform": "local"}}}
    await h.store.write_json(Layout(EXP).experiment_doc, local)
    await h.backend.on_kill(TrialKill(experiment_id=EXP, trial_id="tr9", status=TrialStatus.USER_CANCELED,
                                      reason="x"))
    assert Layout(EXP).trial_doc("tr9") not in h.store.docs


async def test_another_replica_watches_a_run_it_did_not_submit(tmp_path: Path) -> None:
    first = _make(tmp_path)
    await first.backend.submit(_job("sleep 0.2"))
    second = _make(tmp_path)  # same registry and store semantics, fresh process state
    second.store = first.store
    second.backend.store = first.store  # type: ignore[assignment]
    second.tickets = first.tickets
    await first.backend.close()  # the first replica is gone
    end = await second.drive()
    assert end.status == TrialStatus.SUCCEEDED


async def test_not_responding_for_too_long_fails_the_trial(tmp_path: Path) -> None:
    h = _make(tmp_path, not_responding_limit=0.3)
    await h.backend.submit(_job("sleep 60"))
    state_path = tmp_path / "registry" / "tunebus_dep1_exp1_tr1_1" / "state.json"
    for _ in range(500):
        if read_json(state_path)["status"] == "Running":
            break
        await asyncio.sleep(0.02)
    os.kill(read_json(state_path)["runner_pid"], signal.SIGKILL)
    end = await h.drive()
    assert end.status == TrialStatus.FAILED and "NotResponding" in (end.error or "")


async def test_watch_errors_back_off_and_permanent_ones_end_the_trial(tmp_path: Path) -> None:
    h = _make(tmp_path)
    workspace = {"subscription_id": "s", "resource_group": "r", "workspace_name": "ws"}
    ticket = Ticket(experiment_id=EXP, purpose="aml.watch", trial_id="tr1", due=datetime.now(UTC),
                    state={"run_id": "no-such-run", "attempt": 1, "parameter_id": 4, "last_status": "Queued",
                           "workspace": workspace})
    delays = []
    for _ in range(4):
        await h.backend.on_watch(ticket)
        ticket = h.tickets.pop()
        delays.append((ticket.due - datetime.now(UTC)).total_seconds())
        ticket = ticket.model_copy(update={"due": datetime.now(UTC)})
    assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off
    await h.backend.on_watch(ticket)  # the fifth permanent error in a row
    assert not h.tickets
    assert h.reports[-1].status == TrialStatus.FAILED and "not found" in (h.reports[-1].error or "")


async def test_a_ticket_for_something_else_is_dead_lettered(tmp_path: Path) -> None:
    h = _make(tmp_path)
    with pytest.raises(PermanentError):
        await h.backend.on_watch(Ticket(experiment_id=EXP, purpose="ingest.watch", trial_id="t",
                                        due=datetime.now(UTC)))


@pytest.mark.parametrize(("details", "expected"), [
    ({"error": {"error": {"code": "UserError", "message": "boom"}}}, "UserError: boom"),
    ({"error": {"message": "only a message"}}, "only a message"),
    ({"error": "plain"}, "plain"),
    ({"status": "Completed"}, None),
])
def test_failure_reason(details: dict[str, Any], expected: str | None) -> None:
    assert failure_reason(details) == expected


def test_retry_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(attempts=8, base=1.0, cap=10.0)
    values = [policy.delay(n) for n in range(1, 8)]
    assert 0.8 <= values[0] <= 1.2 and 1.6 <= values[1] <= 2.4
    assert max(values) <= 12.0


# ---------------------------------------------------------------- as the SDK really fails


def _runs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "registry").iterdir() if p.is_dir())


def _sdk_execution_error(status: int) -> Exception:
    """azureml-core's own ExperimentExecutionException, as ``_raise_request_error`` builds it."""
    from azureml.exceptions import ExperimentExecutionException

    return ExperimentExecutionException(json.dumps({"status_code": status, "url": "https://x/run",
                                                    "error_details": {"error": {"code": "Throttled"}}}))


async def test_a_429_from_the_sdk_then_success(tmp_path: Path) -> None:
    h = _make(tmp_path, submit_errors=[_sdk_execution_error(429)])
    await h.backend.submit(_job("true"))
    assert h.submits == 2 and h.reports[0].status == TrialStatus.WAITING
    assert _runs(tmp_path) == ["tunebus_dep1_exp1_tr1_1"]


async def test_a_400_from_the_sdk_fails_the_trial_at_once(tmp_path: Path) -> None:
    h = _make(tmp_path, submit_errors=[_sdk_execution_error(400)])
    with pytest.raises(PermanentSubmitError, match="400"):
        await h.backend.submit(_job("true"))
    assert h.submits == 1


async def test_a_crash_between_submit_and_record_adopts_the_run(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("sleep 0.3"))
    del h.store.docs[Layout(EXP).trial_doc("tr1")]  # as if the replica died before recording it
    again = _make(tmp_path)  # the replica that gets the redelivery
    await again.backend.submit(_job("sleep 0.3"))
    assert again.submits == 0  # looked up first: found, adopted, not submitted again
    doc = again.store.docs[Layout(EXP).trial_doc("tr1")][0]
    assert doc["runs"]["1"]["run_id"] == "tunebus_dep1_exp1_tr1_1"
    assert _runs(tmp_path) == ["tunebus_dep1_exp1_tr1_1"]
    assert (await again.drive()).status == TrialStatus.SUCCEEDED


async def test_a_409_after_a_lookup_that_missed_the_run_adopts_it(tmp_path: Path) -> None:
    h = _make(tmp_path)
    await h.backend.submit(_job("sleep 0.3"))
    del h.store.docs[Layout(EXP).trial_doc("tr1")]
    again = _make(tmp_path)
    standin.inject_fault(tmp_path / "registry", "get", 404)  # the first look-up does not see it yet
    await again.backend.submit(_job("sleep 0.3"))
    assert again.submits == 1  # submitted, got the SDK's 409, looked again: adopted
    assert again.reports[0].status == TrialStatus.WAITING
    assert _runs(tmp_path) == ["tunebus_dep1_exp1_tr1_1"]


async def test_a_failure_after_the_run_exists_leaves_no_orphan(tmp_path: Path) -> None:
    h = _make(tmp_path)
    standin.inject_fault(tmp_path / "registry", "tags", 503)  # the tags call after the run exists
    await h.backend.submit(_job("true"))
    assert h.submits == 1  # not submitted a second time: the run was found and adopted
    doc = h.store.docs[Layout(EXP).trial_doc("tr1")][0]
    assert doc["runs"]["1"]["run_id"] == "tunebus_dep1_exp1_tr1_1"  # recorded: watched, cancellable
    workspace = standin.Workspace("s", "r", "ws", settings=standin.StandinSettings(tmp_path / "registry"))
    tags = standin.Run.get(workspace, "tunebus_dep1_exp1_tr1_1").get_tags()
    assert tags["tunebus.deployment"] == "dep1" and tags["tunebus.trial_id"] == "tr1"  # set on adoption
    assert (await h.drive()).status == TrialStatus.SUCCEEDED


async def test_another_deployments_run_is_never_adopted(tmp_path: Path) -> None:
    ours = _make(tmp_path)
    await ours.backend.submit(_job("sleep 0.3"))
    theirs = _make(tmp_path)  # same workspace, same experiment and trial ids, another deployment
    theirs.backend.client.deployment_id = "dep2"
    await theirs.backend.submit(_job("sleep 0.3"))
    assert theirs.submits == 1
    assert _runs(tmp_path) == ["tunebus_dep1_exp1_tr1_1", "tunebus_dep2_exp1_tr1_1"]
    # A run that carries our run id but another deployment's tag is refused, not adopted.
    workspace = standin.Workspace("s", "r", "ws", settings=standin.StandinSettings(tmp_path / "registry"))
    standin.Run.get(workspace, "tunebus_dep1_exp1_tr1_1").set_tags({"tunebus.deployment": "dep9"})
    del ours.store.docs[Layout(EXP).trial_doc("tr1")]
    with pytest.raises(PermanentSubmitError, match="belongs to deployment 'dep9'"):
        await ours.backend.submit(_job("sleep 0.3"))


async def _running(h: Harness) -> None:
    while not any(r.status == TrialStatus.RUNNING for r in h.reports):
        ticket = h.tickets.pop(0).model_copy(update={"due": datetime.now(UTC)})
        await h.backend.on_watch(ticket)


async def test_a_cancel_that_does_not_take_is_sent_again(tmp_path: Path) -> None:
    h = _make(tmp_path, cancel_check_seconds=0.2)
    await h.backend.submit(_job("sleep 60"))
    await _running(h)
    standin.inject_fault(tmp_path / "registry", "cancel", times=1)  # the first cancel is lost
    await h.backend.on_kill(TrialKill(experiment_id=EXP, trial_id="tr1", status=TrialStatus.SYS_CANCELED,
                                      reason="maxTrialDuration exceeded"))
    end = await h.drive()
    assert (end.status, end.error) == (TrialStatus.SYS_CANCELED, "maxTrialDuration exceeded")


async def test_a_cancel_that_never_takes_is_a_named_error(tmp_path: Path) -> None:
    h = _make(tmp_path, cancel_check_seconds=0.05, cancel_attempts=3)
    await h.backend.submit(_job("sleep 60"))
    await _running(h)
    standin.inject_fault(tmp_path / "registry", "cancel", times=3)
    with pytest.raises(CancelNotConfirmedError, match=r"tunebus_dep1_exp1_tr1_1 is still Running after 3"):
        await h.backend.on_kill(TrialKill(experiment_id=EXP, trial_id="tr1", status=TrialStatus.USER_CANCELED,
                                          reason="stopped"))
    await h.backend.on_kill(TrialKill(experiment_id=EXP, trial_id="tr1", status=TrialStatus.USER_CANCELED,
                                      reason="stopped"))  # the redelivery: this one takes
    assert (await h.drive()).status == TrialStatus.USER_CANCELED


async def test_amls_own_limit_is_past_tunebus_and_its_cancel_says_so(tmp_path: Path) -> None:
    h = _make(tmp_path)
    job = _job("sleep 60")
    job.config["maxTrialDuration"] = 1.0
    await h.backend.submit(job)
    assert h.tickets[0].state["aml_limit"] == 1 + 3600  # tunebus's kill comes first
    workspace = standin.Workspace("s", "r", "ws", settings=standin.StandinSettings(tmp_path / "registry"))
    await _running(h)
    standin.Run.get(workspace, "tunebus_dep1_exp1_tr1_1").cancel()  # cancelled in Azure ML, not by tunebus
    end = await h.drive()
    assert end.status == TrialStatus.USER_CANCELED
    assert end.error and "not by tunebus" in end.error and "3601 s" in end.error


async def test_sign_in_passes_over_a_credential_the_workspace_refuses_and_drops_one_refused_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.aml_submitter.aml import client as client_module
    from services.aml_submitter.aml.auth import AuthMethod

    class Forbidden(Exception):
        status_code = 403

    refused = {"msi"}
    made: list[str] = []

    def method(name: str) -> AuthMethod:
        def make(env: Any) -> str:
            made.append(name)
            return name
        return AuthMethod(name, make)

    real_resolve = client_module.resolve_auth
    monkeypatch.setattr(client_module, "resolve_auth", lambda env, **kw: real_resolve(
        env, **{**kw, "methods": [method("msi"), method("cli")]}))
    h = _make(tmp_path)
    base = h.backend.api

    def workspace(sub: str, rg: str, name: str, auth: Any = None) -> Any:
        if auth in refused:
            raise Forbidden(f"AuthorizationFailed: {auth} has no access to {name}")
        return base.Workspace(sub, rg, name)

    h.backend.client._api = SimpleNamespace(**{**vars(base), "Workspace": workspace, "standin": False})
    await h.backend.submit(_job("true"))
    assert made == ["msi", "cli"] and h.backend.client._auth == "cli"
    h.backend.client.drop_credential(Forbidden("role removed"))  # as after a 403 while watching
    refused.add("cli")
    with pytest.raises(PermanentSubmitError) as caught:
        await h.backend.submit(_job("true", trial_id="tr2"))
    message = str(caught.value)
    assert "msi: a token, but the workspace refused it" in message
    assert "cli: a token, but the workspace refused it" in message
