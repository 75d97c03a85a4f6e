"""The dashboard's JSON API against a real Azurite and RabbitMQ: paging bounds, filters,
sorting, conditional reads, token rules, and the command messages its actions publish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from services.dashboard.access import Access
from services.dashboard.app import Dashboard, build_app
from services.dashboard.reader import ExperimentReader
from services.dashboard.settings import DashboardSettings
from shared.bus import Bus, TransientError
from shared.messages import (
    ExperimentResume,
    ExperimentStart,
    ExperimentStatus,
    ExperimentStop,
    ExperimentUpdate,
    Message,
    TrialStatus,
    TrialStopRequested,
)
from shared.storage import BlobStore, Layout
from shared.topology import DISPATCHER_QUEUE
from tests.conftest import Infra
from tests.dashboard.data import store_experiment, store_results, synthetic_state

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    client: TestClient
    store: BlobStore
    seen: list[Message] = field(default_factory=list)

    async def json(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.get(path, **kwargs)
        assert response.status == status, await response.text()
        return await response.json()

    async def post(self, path: str, body: Any = None, *, headers: dict[str, str] | None = None) -> Any:
        return await self.client.post(path, json={} if body is None else body,
                                      headers=AUTH if headers is None else headers)

    async def published(self, count: int) -> list[Message]:
        for _ in range(200):  # bounded: 10 s
            if len(self.seen) >= count:
                return self.seen
            await asyncio.sleep(0.05)
        raise AssertionError(f"expected {count} messages, got {self.seen}")


async def _serve(infra: Infra, container: str, amqp_url: str, *, host: str) -> AsyncIterator[Api]:
    settings = DashboardSettings(storage_connection_string=infra.storage_connection_string,
                                 storage_container=container, amqp_url=amqp_url,
                                 dashboard_token=SecretStr(TOKEN), dashboard_refresh_seconds=0.0)
    store = BlobStore(infra.storage_connection_string, container)
    bus = Bus(amqp_url, service="dashboard-test")
    await bus.connect()
    seen: list[Message] = []

    async def record(msg: Message) -> None:
        seen.append(msg)

    await bus.consume(DISPATCHER_QUEUE, {ExperimentStop: record, ExperimentResume: record,
                                         ExperimentUpdate: record, TrialStopRequested: record})
    reader = ExperimentReader(store, refresh_seconds=0.0)
    dash = Dashboard(settings, reader, Access(TOKEN, loopback_only=host == "127.0.0.1"), bus.publish)
    client = TestClient(TestServer(build_app(dash), host=host))
    await client.start_server()
    try:
        yield Api(client, store, seen)
    finally:
        await client.close()
        await reader.close()
        await bus.close()
        await store.close()


@pytest.fixture
async def api(infra: Infra, fresh_container: str, amqp_vhost: str) -> AsyncIterator[Api]:
    async for served in _serve(infra, fresh_container, amqp_vhost, host="127.0.0.1"):
        yield served


async def test_trials_are_paged_filtered_searched_and_sorted_on_the_server(api: Api) -> None:
    state = synthetic_state("exp-a", 500)
    await store_experiment(api.store, state)

    page = await api.json("/api/experiments/exp-a/trials?limit=20&offset=40")
    assert (page["total"], page["matched"], len(page["items"])) == (500, 500, 20)
    assert [t["sequence_id"] for t in page["items"]] == list(range(40, 60))

    failed = await api.json("/api/experiments/exp-a/trials?status=FAILED&limit=200")
    expected = sum(1 for t in state.trials.values() if t.status == TrialStatus.FAILED)
    assert failed["matched"] == expected and all(t["status"] == "FAILED" for t in failed["items"])

    best = await api.json("/api/experiments/exp-a/trials?sort=-final&limit=3")
    finals = sorted((t.final_value for t in state.trials.values() if t.final_value is not None), reverse=True)
    assert [t["final_value"] for t in best["items"]] == finals[:3]
    last = await api.json("/api/experiments/exp-a/trials?sort=-final&offset=499&limit=1")
    assert last["items"][0]["final_value"] is None  # unscored trials last, whichever the direction

    layers = await api.json('/api/experiments/exp-a/trials?q="layers":4&limit=200')
    assert layers["matched"] == sum(1 for t in state.trials.values() if t.parameters["layers"] == 4)
    assert all(t["parameters"]["layers"] == 4 for t in layers["items"])


BAD_QUERIES = [("limit=201", "limit"), ("limit=0", "limit"), ("offset=-1", "offset"), ("limit=abc", "limit"),
               ("status=DANCING", "status"), ("sort=colour", "sort"), ("q=" + "x" * 201, "q")]


async def test_bad_trial_queries_are_refused_naming_the_parameter(api: Api) -> None:
    await store_experiment(api.store, synthetic_state("exp-b", 5))
    for query, named in BAD_QUERIES:  # one stack for all: each setup costs a vhost
        body = await api.json(f"/api/experiments/exp-b/trials?{query}", status=400)
        assert body["error"].startswith(f"{named}:"), (query, body)


async def test_reads_are_conditional_on_the_state_document(api: Api) -> None:
    state = synthetic_state("exp-c", 10)
    await store_experiment(api.store, state)
    first = await api.client.get("/api/experiments/exp-c")
    etag = first.headers["ETag"]
    again = await api.client.get("/api/experiments/exp-c", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""

    state.trials.pop(next(iter(state.trials)))
    state.trials_created -= 1  # a document of 9 trials, as the dispatcher counts them
    await api.store.write_document(Layout("exp-c").state_doc, state.model_dump_json().encode())
    changed = await api.client.get("/api/experiments/exp-c", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert (await changed.json())["experiment"]["trials_total"] == 9


async def test_the_list_reads_each_experiment_again_only_when_it_changed(api: Api) -> None:
    reader = ExperimentReader(api.store, refresh_seconds=0.0, capacity=1)  # fewer than the experiments
    for name in ("exp-1", "exp-2", "exp-3"):
        await store_experiment(api.store, synthetic_state(name, 20))
    first = [await reader.summary(name) for name in ("exp-1", "exp-2", "exp-3")]
    again = [await reader.summary(name) for name in ("exp-1", "exp-2", "exp-3")]
    assert all(a is b for a, b in zip(first, again, strict=True))  # 304s: nothing parsed again
    state = synthetic_state("exp-2", 21)
    await api.store.write_document(Layout("exp-2").state_doc, state.model_dump_json().encode())
    changed = await reader.summary("exp-2")
    assert changed is not None and changed is not again[1] and changed.summary.trials_total == 21


async def test_experiment_list_overview_and_aggregates_stay_bounded(api: Api) -> None:
    await store_experiment(api.store, synthetic_state("exp-big", 3000))
    await store_experiment(api.store, synthetic_state("exp-done", 4, running=0, status=ExperimentStatus.DONE))
    listed = await api.json("/api/experiments?status=DONE")
    assert [r["id"] for r in listed["items"]] == ["exp-done"] and listed["total"] == 2

    overview = await api.json("/api/experiments/exp-big")
    assert overview["experiment"]["trials_total"] == 3000 and overview["limits"]["maxTrialNumber"] == 20000
    metric = await api.json("/api/experiments/exp-big/metric")
    assert metric["downsampled"] and len(metric["scatter"]["sequence"]) <= 2000 + len(metric["best"]["value"])
    assert metric["best"]["value"] == sorted(metric["best"]["value"])  # maximize: never worse

    params = await api.json("/api/experiments/exp-big/parameters?top=10")
    assert params["shown"] == -(-params["scored"] // 10)
    kinds = {d["name"]: d["kind"] for d in params["dimensions"]}
    assert kinds == {"lr": "log", "layers": "choice", "dropout": "number"}
    assert min(params["metric"]) >= sorted((v for v in metric["scatter"]["value"]), reverse=True)[-1]
    await api.json("/api/experiments/exp-big/parameters?top=0", status=400)
    await api.json("/api/experiments/nope", status=404)
    await api.json("/api/experiments/bad..id", status=400)


async def test_trial_detail_has_metrics_logs_masked_and_curves(api: Api) -> None:
    state = synthetic_state("exp-d", 3)
    trial = state.by_sequence()[0]
    trial.job_url = "javascript:alert(1)"
    await store_experiment(api.store, state)
    await store_results(api.store, "exp-d", trial.trial_id, [0.1, 0.2, 0.3], final=0.4)
    secret_line = "connecting with AccountKey=c2VjcmV0c2VjcmV0c2VjcmV0;\n"
    log = b"x" * 70_000 + secret_line.encode()
    await api.store.write_bytes(Layout("exp-d").log_blob(trial.trial_id, "stdout"), log)

    detail = await api.json(f"/api/experiments/exp-d/trials/{trial.trial_id}")
    assert [m["value"] for m in detail["metrics"]] == [0.1, 0.2, 0.3, 0.4]
    stdout = detail["logs"]["stdout"]
    assert stdout["skipped"] > 0 and stdout["text"].endswith("AccountKey=***;\n")
    assert "c2VjcmV0" not in stdout["text"] and detail["logs"]["stderr"] is None
    assert detail["portal_url"] is None  # only http(s) links are shown

    curves = await api.json(f"/api/experiments/exp-d/intermediate?trials={trial.trial_id}")
    assert curves["curves"][0]["value"] == [0.1, 0.2, 0.3] and curves["curves"][0]["step"] == [1, 2, 3]
    await api.json("/api/experiments/exp-d/intermediate?trials=nosuch", status=400)


async def test_actions_need_the_token_and_publish_the_clis_commands(api: Api) -> None:
    state = synthetic_state("exp-e", 4, running=1)
    await store_experiment(api.store, state)
    running = state.by_sequence()[-1].trial_id
    ended = state.by_sequence()[0].trial_id

    assert (await api.post("/api/experiments/exp-e/stop", headers={})).status == 401
    wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
    assert (await api.post("/api/experiments/exp-e/stop", headers=wrong)).status == 401
    form = await api.client.post("/api/experiments/exp-e/stop", data="a=1",
                                 headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 415
    other_site = await api.post("/api/experiments/exp-e/stop", headers={**AUTH, "Origin": "http://evil.example"})
    assert other_site.status == 403
    assert api.seen == []

    assert (await api.post("/api/experiments/exp-e/update", {"trialConcurrency": 0})).status == 400
    assert (await api.post("/api/experiments/exp-e/update", {"colour": 1})).status == 400
    assert (await api.post(f"/api/experiments/exp-e/trials/{ended}/kill")).status == 409
    assert (await api.post("/api/experiments/exp-e/resume")).status == 409  # it is running

    assert (await api.post("/api/experiments/exp-e/update",
                           {"trialConcurrency": 3, "maxExperimentDuration": "2h"})).status == 202
    assert (await api.post(f"/api/experiments/exp-e/trials/{running}/kill")).status == 202
    assert (await api.post("/api/experiments/exp-e/stop")).status == 202
    update, kill, stop = await api.published(3)
    assert isinstance(update, ExperimentUpdate) and update.limits() == {"trialConcurrency": 3,
                                                                        "maxExperimentDuration": 7200}
    assert isinstance(kill, TrialStopRequested) and kill.trial_id == running
    assert kill.status == TrialStatus.USER_CANCELED
    assert isinstance(stop, ExperimentStop) and stop.experiment_id == "exp-e"

    cookie_session = await api.client.get(f"/?token={TOKEN}", allow_redirects=False)
    assert cookie_session.status == 303 and "token" not in cookie_session.headers["Location"]
    assert (await api.json("/api/session"))["actions"] is True  # the cookie now carries it


async def test_a_non_loopback_binding_needs_the_token_for_every_read(
        infra: Infra, fresh_container: str, amqp_vhost: str) -> None:
    async for api in _serve(infra, fresh_container, amqp_vhost, host="0.0.0.0"):
        await store_experiment(api.store, synthetic_state("exp-f", 2))
        assert (await api.client.get("/api/experiments/exp-f")).status == 401
        assert (await api.client.get("/")).status == 401
        assert (await api.client.get("/api/experiments/exp-f", headers=AUTH)).status == 200


async def test_a_loopback_binding_refuses_other_host_names(api: Api) -> None:
    rebound = await api.client.get("/api/experiments", headers={"Host": "attacker.example:8080"})
    assert rebound.status == 403


async def test_the_dashboards_broker_account_publishes_its_commands_and_nothing_else(infra: Infra) -> None:
    if infra.credentials_dir is None:
        pytest.skip("the broker's accounts are made by deploy/local")
    password = (infra.credentials_dir / "amqp-tunebus-dashboard").read_text().strip()
    where = urlsplit(infra.amqp_url)
    bus = Bus(f"amqp://tunebus-dashboard:{password}@{where.hostname}:{where.port}/", service="test-dashboard")
    try:
        await bus.connect(attempts=1)
        await bus.publish(ExperimentStop(experiment_id="perm-dashboard"))
        with pytest.raises(TransientError, match="ACCESS_REFUSED"):
            await bus.publish(ExperimentStart(experiment_id="perm-dashboard", config={}))
    finally:
        await bus.close()


async def test_an_ended_trials_results_are_read_once(api: Api) -> None:
    reader = ExperimentReader(api.store, refresh_seconds=0.0)
    await store_experiment(api.store, synthetic_state("exp-g", 1, running=0))
    await store_results(api.store, "exp-g", "t1", [0.5], final=0.6)
    first, _ = await reader.metrics("exp-g", "t1", 1, 4096, ended=True)
    await store_results(api.store, "exp-g", "t1", [0.1, 0.2], final=0.3)  # (results never change so)
    kept, _ = await reader.metrics("exp-g", "t1", 1, 4096, ended=True)
    live, _ = await reader.metrics("exp-g", "t1", 1, 4096)
    assert [m.value for m in kept] == [m.value for m in first] == [0.5, 0.6]
    assert [m.value for m in live] == [0.1, 0.2, 0.3]


async def test_a_running_trials_answers_are_read_again_each_poll_period_an_ended_ones_not(api: Api) -> None:
    state = synthetic_state("exp-h", 2, running=1)
    ended, running = (t.trial_id for t in state.by_sequence())
    await store_experiment(api.store, state)
    tags = {}
    for trial_id in (ended, running):
        tags[trial_id] = (await api.client.get(f"/api/experiments/exp-h/trials/{trial_id}")).headers["ETag"]
    await asyncio.sleep(1.1)  # past the poll period (1 s), the state document unchanged
    for trial_id, expected in ((ended, 304), (running, 200)):
        again = await api.client.get(f"/api/experiments/exp-h/trials/{trial_id}",
                                     headers={"If-None-Match": tags[trial_id]})
        assert again.status == expected, trial_id
