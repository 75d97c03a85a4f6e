"""Sharded services against a real RabbitMQ: experiments partitioned over shard queues, replicas
sharing the shards (and taking over a gone one's), per-experiment order, slow experiments
holding up only themselves, and the single queues of before drained into the shards."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

import aio_pika
import pytest

from shared.bus import Bus, TransientError, end_turn
from shared.messages import SuggestRequest, TrialEnded, TrialStatus
from shared.placement import LoadMeter, Planner, owner_of
from shared.shards import ShardedConsumer
from shared.topology import EVENTS_EXCHANGE, EXPERIMENT_HEADER, TUNER_QUEUE, TUNER_SHARDS

pytestmark = pytest.mark.integration

EXPERIMENTS = [f"exp{n:02d}" for n in range(24)]


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for ``condition`` (an event the test can see), bounded generously."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


async def _bus(url: str, service: str = "test") -> Bus:
    bus = Bus(url, service=service)
    await bus.connect()
    return bus


class Recorder:
    """A stand-in tuner: records which replica handled which experiment's request, in order."""

    def __init__(self) -> None:
        self.handled: dict[str, list[tuple[str, int]]] = defaultdict(list)  # experiment -> (replica, id)
        self.released: dict[str, list[str]] = defaultdict(list)

    def replica(self, name: str) -> tuple[dict[type, Callable], Callable]:
        async def on_suggest(msg: SuggestRequest) -> None:
            await asyncio.sleep(0.002)  # a little work, so that deliveries overlap
            self.handled[msg.experiment_id].append((name, msg.parameter_ids[0]))

        async def release(experiment_ids: list[str]) -> None:
            self.released[name].extend(experiment_ids)

        return {SuggestRequest: on_suggest}, release

    def ids(self, experiment: str) -> list[int]:
        return [pid for _, pid in self.handled[experiment]]

    def replicas_of(self, experiment: str) -> set[str]:
        return {name for name, _ in self.handled[experiment]}


async def _replica(url: str, recorder: Recorder, name: str) -> tuple[Bus, ShardedConsumer]:
    bus = await _bus(url, name)
    handlers, release = recorder.replica(name)
    consumer = ShardedConsumer(bus, TUNER_SHARDS, handlers, prefetch=8, concurrency=4, on_release=release,
                               replica=name, heartbeat=0.2, peer_timeout=1.5, cooldown=1.0)
    await consumer.start()
    return bus, consumer


async def _publish_round(bus: Bus, first_id: int, count: int) -> None:
    for pid in range(first_id, first_id + count):
        for experiment in EXPERIMENTS:
            await bus.publish(SuggestRequest(experiment_id=experiment, parameter_ids=[pid]))


async def test_one_experiments_messages_reach_one_shard_and_a_retry_comes_back_to_it(amqp_vhost: str) -> None:
    bus = await _bus(amqp_vhost)
    where: dict[str, set[str]] = defaultdict(set)
    attempts: dict[str, int] = defaultdict(int)
    try:
        for shard in TUNER_SHARDS.queues():
            async def on_ended(msg: TrialEnded, shard_name: str = shard.name) -> None:
                where[msg.experiment_id].add(shard_name)
                attempts[msg.trial_id] += 1
                if msg.trial_id == "flaky" and attempts["flaky"] == 1:
                    raise TransientError("storage away")
            await bus.consume(shard, {TrialEnded: on_ended})
        for experiment in EXPERIMENTS:
            for trial in ("t1", "t2"):
                await bus.publish(TrialEnded(experiment_id=experiment, trial_id=f"{experiment}-{trial}",
                                             parameter_id=1, status=TrialStatus.SUCCEEDED))
        await bus.publish(TrialEnded(experiment_id="exp00", trial_id="flaky", parameter_id=2,
                                     status=TrialStatus.SUCCEEDED))
        await _until(lambda: attempts["flaky"] == 2 and len(where) == len(EXPERIMENTS), "every message")
    finally:
        await bus.close()
    assert all(len(shards) == 1 for shards in where.values()), where
    assert len({next(iter(s)) for s in where.values()}) >= 4, "24 experiments spread over few shards"


async def test_two_replicas_share_the_shards_keep_order_and_one_takes_over_when_the_other_dies(
        amqp_vhost: str) -> None:
    recorder = Recorder()
    publisher = await _bus(amqp_vhost)
    bus_a, a = await _replica(amqp_vhost, recorder, "replica-a")
    bus_b, b = await _replica(amqp_vhost, recorder, "replica-b")
    try:
        await _until(lambda: a.view == b.view == ("replica-a", "replica-b"), "both replicas see each other")
        await _publish_round(publisher, 0, 20)
        await _until(lambda: all(len(recorder.ids(e)) >= 20 for e in EXPERIMENTS), "the first round")
        # Both served experiments: after the hand-over each shard's messages go to its owner.
        await _publish_round(publisher, 20, 10)
        await _until(lambda: all(len(recorder.ids(e)) >= 30 for e in EXPERIMENTS), "the second round")
        late_servers = {name for e in EXPERIMENTS for name, pid in recorder.handled[e] if pid >= 20}
        assert late_servers == {"replica-a", "replica-b"}
        for e in EXPERIMENTS:
            shard_owner = {name for name, pid in recorder.handled[e] if pid >= 20}
            assert len(shard_owner) == 1, f"{e} served by both replicas at once: {recorder.handled[e]}"
        # Replica b dies (its connection goes): a takes its shards and its experiments go on.
        await bus_b.close(grace=0)
        await b.stop()
        await _publish_round(publisher, 30, 10)
        await _until(lambda: all(len(recorder.ids(e)) >= 40 for e in EXPERIMENTS), "the round after b died")
        assert {name for e in EXPERIMENTS for name, pid in recorder.handled[e] if pid >= 30} == {"replica-a"}
        await _until(lambda: a.view == ("replica-a",), "a sees b gone")
        assert a.owned() == list(range(TUNER_SHARDS.count))
    finally:
        await a.stop()
        await bus_a.close()
        await publisher.close()
    for e in EXPERIMENTS:  # each experiment's requests handled in the order published
        ids = recorder.ids(e)
        assert sorted(set(ids)) == list(range(40)), f"{e}: lost requests: {ids}"
        first_seen = list(dict.fromkeys(ids))
        assert first_seen == list(range(40)), f"{e}: out of order: {ids}"
    # What a replica handed over, it forgot (so that it reloads it if the shard comes back).
    moved = {e for e in EXPERIMENTS if recorder.replicas_of(e) == {"replica-a", "replica-b"}}
    assert moved and moved <= set(recorder.released["replica-a"]) | set(recorder.released["replica-b"])


async def test_the_owner_of_each_shard_is_the_same_for_every_replica() -> None:
    views = [("b", "a", "c"), ("c", "b", "a")]
    owners = [[owner_of(k, view) for k in range(8)] for view in views]
    assert owners[0] == owners[1] == ["a", "b", "c", "a", "b", "c", "a", "b"]


async def test_the_leader_moves_shards_from_a_busy_replica_to_an_idle_one_keeping_each_experiments_order(
        amqp_vhost: str) -> None:
    """Four busy experiments on four shards that the hash gives to the same replica (0, 2, 4, 6 of
    two replicas: all replica-a's): the leader measures the load and moves two of them to
    replica-b, and each experiment's requests are still handled once each, in order."""
    hot = {f"hot{k}": k for k in (0, 2, 4, 6)}
    handled: dict[str, list[tuple[str, int]]] = defaultdict(list)
    busy_replicas: dict[str, ShardedConsumer] = {}

    def handlers(name: str) -> dict[type, Callable]:
        async def on_suggest(msg: SuggestRequest) -> None:
            await asyncio.sleep(0.04)  # work: what the load meter measures
            handled[msg.experiment_id].append((name, msg.parameter_ids[0]))
        return {SuggestRequest: on_suggest}

    async def release(experiment_ids: list[str]) -> None:
        pass

    buses = []
    for name in ("replica-a", "replica-b"):
        bus = await _bus(amqp_vhost, name)
        buses.append(bus)
        busy_replicas[name] = ShardedConsumer(
            bus, TUNER_SHARDS, handlers(name), prefetch=8, concurrency=4, on_release=release, replica=name,
            heartbeat=0.2, peer_timeout=1.5, cooldown=0.5, meter=LoadMeter(TUNER_SHARDS.count, tau=1.0),
            planner=Planner(TUNER_SHARDS.count, every=0.5, settle=2.0))
        await busy_replicas[name].start()
    a, b = busy_replicas["replica-a"], busy_replicas["replica-b"]
    connection = await aio_pika.connect(amqp_vhost)
    try:
        channel = await connection.channel(publisher_confirms=True)
        direct = {}
        for shard in hot.values():  # straight into each experiment's shard, as the hash would
            direct[shard] = await channel.declare_exchange(f"test.shard-{shard}", "direct", auto_delete=True)
            queue = await channel.get_queue(TUNER_SHARDS.queue(shard).name)
            await queue.bind(direct[shard], routing_key="suggest.request")
        await _until(lambda: a.view == b.view == ("replica-a", "replica-b"), "both replicas see each other")
        assert all(owner_of(k, a.view) == "replica-a" for k in hot.values())

        async def round_of(pid: int) -> None:  # one request per experiment, all handled before the next
            for experiment, shard in hot.items():
                body = SuggestRequest(experiment_id=experiment, parameter_ids=[pid]).model_dump_json()
                message = aio_pika.Message(body.encode(), headers={EXPERIMENT_HEADER: experiment})
                await direct[shard].publish(message, routing_key="suggest.request")
            await _until(lambda: all(len(handled[e]) > pid for e in hot), f"round {pid}")

        def split(since: int) -> dict[str, set[str]]:
            return {e: {name for name, pid in handled[e] if pid >= since} for e in hot}

        pid = 0
        deadline = time.monotonic() + 120
        while not ({"replica-b"} in split(max(0, pid - 10)).values() and pid >= 10):
            assert time.monotonic() < deadline, f"no shard moved to the idle replica: {split(0)}"
            await round_of(pid)
            pid += 1
        settled = pid
        for _ in range(20):  # 20 more rounds: the two replicas share the four experiments 2:2
            await round_of(pid)
            pid += 1
        late = split(settled + 10)
        assert all(len(names) == 1 for names in late.values()), late
        per_replica = sorted(sum(1 for names in late.values() if names == {r})
                             for r in ("replica-a", "replica-b"))
        assert per_replica == [2, 2], late
        assert sorted(a.owned() + b.owned()) == list(range(TUNER_SHARDS.count))  # one plan, followed by both
    finally:
        await connection.close()
        for consumer in (a, b):
            await consumer.stop()
        for bus in buses:
            await bus.close()
    for e in hot:
        ids = [pid for _, pid in handled[e]]
        assert ids == list(range(len(ids))), f"{e}: handled twice or out of order: {ids}"


async def _into_shard_0(amqp_vhost: str, requests: list[SuggestRequest]) -> None:
    """Publish ``requests`` straight into the tuner's shard 0 (not through the hash ring), in
    order, by an exchange of the test's own."""
    connection = await aio_pika.connect(amqp_vhost)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        direct = await channel.declare_exchange("test.direct", "direct", auto_delete=True)
        shard = await channel.get_queue(TUNER_SHARDS.queue(0).name)
        await shard.bind(direct, routing_key="suggest.request")
        for request in requests:
            message = aio_pika.Message(request.model_dump_json().encode(),
                                       headers={EXPERIMENT_HEADER: request.experiment_id})
            await direct.publish(message, routing_key="suggest.request")


async def test_a_slow_experiment_holds_up_only_itself(amqp_vhost: str) -> None:
    bus = await _bus(amqp_vhost)
    slow_started = asyncio.Event()
    release_slow = asyncio.Event()
    order: list[tuple[str, int]] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        if msg.experiment_id == "slow":
            slow_started.set()
            await release_slow.wait()
        order.append((msg.experiment_id, msg.parameter_ids[0]))

    try:
        # One queue only: the slow experiment and the others share it (the worst case).
        await bus.consume(TUNER_SHARDS.queue(0), {SuggestRequest: on_suggest}, prefetch=64, concurrency=4,
                          per_experiment=True)
        await _into_shard_0(amqp_vhost, [SuggestRequest(experiment_id=experiment, parameter_ids=[pid])
                                         for pid in range(3) for experiment in ("slow", "fast1", "fast2")])
        await _until(lambda: sum(1 for e, _ in order if e != "slow") == 6, "the fast experiments' requests")
        assert slow_started.is_set() and not [o for o in order if o[0] == "slow"]
        release_slow.set()
        await _until(lambda: len(order) == 9, "the slow experiment's requests")
    finally:
        await bus.close()
    assert [pid for e, pid in order if e == "slow"] == [0, 1, 2]
    assert [pid for e, pid in order if e == "fast1"] == [0, 1, 2]


async def test_a_handler_that_ends_its_turn_lets_its_experiments_next_delivery_start(amqp_vhost: str) -> None:
    """end_turn(): the dispatcher's handler, once its change is applied, lets the experiment's
    next delivery apply while it waits for its write (the held one here); without it, the
    experiment's deliveries wait for each other (the slow experiment above)."""
    bus = await _bus(amqp_vhost)
    release_first = asyncio.Event()
    order: list[int] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        pid = msg.parameter_ids[0]
        if pid == 0:
            end_turn()
            await release_first.wait()
        order.append(pid)

    try:
        await bus.consume(TUNER_SHARDS.queue(0), {SuggestRequest: on_suggest}, prefetch=64, concurrency=4,
                          per_experiment=True)
        await _into_shard_0(amqp_vhost, [SuggestRequest(experiment_id="e", parameter_ids=[pid])
                                         for pid in range(3)])
        await _until(lambda: order == [1, 2], "the deliveries after the held one, in order")
        release_first.set()
        await _until(lambda: len(order) == 3, "the held delivery")
    finally:
        await bus.close()


async def test_a_legacy_single_queue_and_a_retired_shard_are_drained_into_the_shards_and_deleted(
        amqp_vhost: str) -> None:
    connection = await aio_pika.connect(amqp_vhost)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.declare_exchange(EVENTS_EXCHANGE, "topic", durable=True)
        legacy = await channel.declare_queue(TUNER_QUEUE.name, durable=True,
                                             arguments=TUNER_QUEUE.declare_arguments())
        for key in TUNER_QUEUE.bindings:
            await legacy.bind(events, routing_key=key)
        for pid in range(5):  # as an earlier version published them: no experiment header
            body = SuggestRequest(experiment_id="old", parameter_ids=[pid]).model_dump_json().encode()
            await events.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                 routing_key="suggest.request")
        # A deployment that had one more shard than this one: its last shard holds a request.
        retired = TUNER_SHARDS.retired_queues()[0]
        hashing = await channel.declare_exchange(TUNER_SHARDS.exchange, "x-consistent-hash", durable=True,
                                                 arguments=TUNER_SHARDS.exchange_spec().arguments)
        shard = await channel.declare_queue(retired.name, durable=True, arguments=retired.declare_arguments())
        await shard.bind(hashing, routing_key="1")
        direct = await channel.declare_exchange("test.direct", "direct", auto_delete=True)
        await shard.bind(direct, routing_key="suggest.request")
        body = SuggestRequest(experiment_id="older", parameter_ids=[99]).model_dump_json().encode()
        await direct.publish(aio_pika.Message(body, headers={EXPERIMENT_HEADER: "older"}),
                             routing_key="suggest.request")
    bus = await _bus(amqp_vhost)
    got: list[int] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        got.append(msg.parameter_ids[0])

    try:
        assert await bus.drain_retired_queues(TUNER_SHARDS, TUNER_QUEUE) == 6
        for present in TUNER_SHARDS.queues():
            await bus.consume(present, {SuggestRequest: on_suggest})
        await _until(lambda: len(got) == 6, "the drained requests")
        assert await bus.drain_retired_queues(TUNER_SHARDS, TUNER_QUEUE) == 0  # gone
    finally:
        await bus.close()
    assert [pid for pid in got if pid != 99] == [0, 1, 2, 3, 4] and 99 in got


async def test_a_message_without_the_experiment_header_reaches_a_shard_and_is_handled(
        amqp_vhost: str) -> None:
    """A publisher that sets no header (an earlier version, a program of one's own): the hash
    exchange still routes it to a shard, and nothing breaks."""
    bus = await _bus(amqp_vhost)
    got: list[str] = []

    async def on_suggest(msg: SuggestRequest) -> None:
        got.append(msg.experiment_id)

    try:
        for shard in TUNER_SHARDS.queues():
            await bus.consume(shard, {SuggestRequest: on_suggest})
        connection = await aio_pika.connect(amqp_vhost)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            events = await channel.get_exchange(EVENTS_EXCHANGE)
            for experiment in ("bare1", "bare2"):
                body = SuggestRequest(experiment_id=experiment, parameter_ids=[1]).model_dump_json().encode()
                await events.publish(aio_pika.Message(body), routing_key="suggest.request")
        await bus.publish(SuggestRequest(experiment_id="with-header", parameter_ids=[1]))
        await _until(lambda: len(got) == 3, "all three requests")
    finally:
        await bus.close()
    assert sorted(got) == ["bare1", "bare2", "with-header"]
