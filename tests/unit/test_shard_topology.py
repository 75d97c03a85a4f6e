"""The sharded services' topology as data: shard count from the environment, validated; every
routing key of a sharded service reaches its hash exchange; retired shards are the ones beyond."""

from __future__ import annotations

import pytest

from shared.topology import (
    DISPATCHER_SHARDS,
    EXPERIMENT_HEADER,
    MAX_SHARDS,
    QUEUES,
    TUNER_SHARDS,
    event_routing_keys,
    shard_count,
)


def test_the_shard_count_comes_from_tunebus_shards_and_bad_values_are_refused_by_name() -> None:
    assert shard_count({}) == 8
    assert shard_count({"TUNEBUS_SHARDS": " 3 "}) == 3
    for bad in ("0", "-1", "65", "eight", ""):
        with pytest.raises(ValueError, match="TUNEBUS_SHARDS"):
            shard_count({"TUNEBUS_SHARDS": bad})


def test_each_shard_is_a_single_active_consumer_quorum_queue_on_its_hash_exchange() -> None:
    for sharded in (DISPATCHER_SHARDS, TUNER_SHARDS):
        assert sharded.exchange_spec().arguments == {"hash-header": EXPERIMENT_HEADER}
        names = [q.name for q in sharded.queues()]
        assert names == [f"tunebus.{sharded.service}.shard-{k}" for k in range(sharded.count)]
        for queue in sharded.queues():
            args = queue.declare_arguments()
            assert args["x-single-active-consumer"] is True and args["x-queue-type"] == "quorum"
            assert queue.exchange == sharded.exchange and queue.bindings == ("1",)
            assert queue in QUEUES
        assert set(sharded.bindings) <= set(event_routing_keys())
        retired = [q.name for q in sharded.retired_queues()]
        assert len(retired) == MAX_SHARDS - sharded.count and retired[0].endswith(f"shard-{sharded.count}")
        with pytest.raises(ValueError, match="not one of"):
            sharded.queue(sharded.count)
