"""Shard placement (shared.placement): hashed first, then moved towards an even measured load,
without flapping on noise, from announcements that are validated like any other input."""

from __future__ import annotations

import math

import pytest

from shared.placement import (
    LoadMeter,
    Plan,
    Planner,
    hashed_owners,
    owner_of,
    parse_loads,
    parse_plan,
    rebalance,
)

AB = ("a", "b")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def load_of(owners: tuple[str, ...], loads: dict[int, float], replica: str) -> float:
    return sum(loads.get(k, 0.0) for k, owner in enumerate(owners) if owner == replica)


def test_hashed_owners_are_owner_of_each_shard_whatever_the_order_of_the_view() -> None:
    assert hashed_owners(8, AB) == ("a", "b") * 4
    assert hashed_owners(5, ("a", "b", "c")) == tuple(owner_of(k, ("c", "a", "b")) for k in range(5))
    with pytest.raises(ValueError):
        owner_of(0, ())


def test_a_seven_to_three_split_is_evened_out() -> None:
    """Ten equally busy experiments, seven on a's shards and three on b's (the hash's luck)."""
    loads = {0: 2.0, 2: 2.0, 4: 2.0, 6: 1.0, 1: 1.0, 3: 1.0, 5: 1.0}  # a: 7, b: 3
    owners = hashed_owners(8, AB)
    assert (load_of(owners, loads, "a"), load_of(owners, loads, "b")) == (7.0, 3.0)
    moved = rebalance(owners, AB, loads)
    assert (load_of(moved, loads, "a"), load_of(moved, loads, "b")) == (5.0, 5.0)
    assert sum(1 for old, new in zip(owners, moved, strict=True) if old != new) == 1  # one shard moved


def test_several_moves_in_one_round_when_one_replica_has_everything() -> None:
    loads = {0: 1.0, 2: 1.0, 4: 1.0, 6: 1.0}
    moved = rebalance(hashed_owners(8, AB), AB, loads)
    assert load_of(moved, loads, "a") == load_of(moved, loads, "b") == 2.0


def test_noise_moves_nothing() -> None:
    owners = hashed_owners(8, AB)
    assert rebalance(owners, AB, {0: 1.0, 1: 0.93}) == owners  # 7% apart: below the margin
    assert rebalance(owners, AB, {0: 0.04}) == owners  # idle: below the absolute margin
    assert rebalance(owners, AB, {}) == owners


def test_a_move_that_would_only_swap_the_busiest_replica_is_not_made() -> None:
    owners = hashed_owners(8, AB)
    assert rebalance(owners, AB, {0: 3.0, 1: 1.0}) == owners  # moving shard 0 makes b the busier one


def test_frozen_shards_stay_and_the_choice_is_deterministic() -> None:
    loads = {0: 1.0, 2: 1.0, 4: 1.0, 6: 1.0}
    owners = hashed_owners(8, AB)
    assert rebalance(owners, AB, loads, frozen={0, 2, 4, 6}) == owners
    first = rebalance(owners, AB, loads)
    assert all(rebalance(owners, AB, dict(reversed(list(loads.items())))) == first for _ in range(3))
    partly = rebalance(owners, AB, loads, frozen={0, 2})
    assert {k for k in (4, 6) if partly[k] == "b"} == {4, 6}


def test_three_replicas_share_by_load() -> None:
    view = ("a", "b", "c")
    loads = {0: 1.0, 3: 1.0, 6: 1.0, 1: 0.1}
    moved = rebalance(hashed_owners(8, view), view, loads)
    assert sorted(load_of(moved, loads, r) for r in view) == [1.0, 1.0, 1.1]


def test_the_load_meter_measures_busy_seconds_per_second() -> None:
    clock = Clock()
    meter = LoadMeter(4, tau=10.0, clock=clock)
    for _ in range(100):  # shard 1 busy half the time, shard 2 never
        clock.now += 1.0
        meter.add(1, 0.5)
        rates = meter.rates()
    assert rates.keys() == {1}
    assert rates[1] == pytest.approx(0.5, abs=0.01)
    for _ in range(60):  # then idle: it fades out
        clock.now += 1.0
        rates = meter.rates()
    assert rates == {}


def test_the_load_meter_rises_with_its_time_constant() -> None:
    clock = Clock()
    meter = LoadMeter(1, tau=10.0, clock=clock)
    clock.now += 10.0
    meter.add(0, 10.0)
    assert meter.rates()[0] == pytest.approx(1 - math.exp(-1), abs=0.001)
    clock.now += 0.0
    meter.add(0, -5.0)  # a negative duration (a clock step) counts as nothing
    assert meter.rates()[0] == pytest.approx(1 - math.exp(-1), abs=0.001)


def test_the_planner_starts_from_the_hash_and_rebalances_only_now_and_then() -> None:
    clock = Clock()
    planner = Planner(8, every=3.0, settle=15.0, clock=clock)
    loads = {0: 1.0, 2: 1.0, 4: 1.0, 6: 1.0}
    first = planner.plan(AB, loads)
    assert first == Plan(AB, hashed_owners(8, AB))  # a new view: the hash, nothing measured yet
    clock.now += 1.0
    assert planner.plan(AB, loads) is first  # too soon
    clock.now += 2.0
    second = planner.plan(AB, loads)
    assert load_of(second.owners, loads, "a") == load_of(second.owners, loads, "b") == 2.0
    moved = {k for k in range(8) if first.owners[k] != second.owners[k]}
    # The moved shards' new owner measures them from nothing: they stay put while that settles,
    # even if their load now reads as zero.
    clock.now += 3.0
    fading = {k: (0.0 if k in moved else v) for k, v in loads.items()}
    assert planner.plan(AB, fading) == second
    clock.now += 15.0
    assert planner.plan(AB, loads) == second  # balanced: stays


def test_a_new_view_starts_again_from_the_hash() -> None:
    clock = Clock()
    planner = Planner(8, every=0.0, clock=clock)
    planner.plan(AB, {})
    clock.now += 1.0
    planner.plan(AB, {0: 1.0, 2: 1.0, 4: 1.0, 6: 1.0})
    view = ("a", "b", "c")
    assert planner.plan(view, {0: 1.0}) == Plan(view, hashed_owners(8, view))


def test_announced_plans_are_validated() -> None:
    good = {"view": ["a", "b"], "owners": ["a", "b", "b", "a"]}
    assert parse_plan(good, 4, 100) == Plan(("a", "b"), ("a", "b", "b", "a"))
    bad = [
        None, [], "plan", {"view": ["a", "b"]},
        {"view": ["a", "b"], "owners": ["a", "b", "b"]},  # not one owner per shard
        {"view": ["a", "b"], "owners": ["a", "b", "b", "c"]},  # an owner not in the view
        {"view": ["b", "a"], "owners": ["a", "b", "b", "a"]},  # view not sorted
        {"view": ["a", "a"], "owners": ["a", "a", "a", "a"]},  # a replica twice
        {"view": [], "owners": []},
        {"view": ["a", "x" * 101], "owners": ["a"] * 4},  # a name too long
        {"view": ["a", 3], "owners": ["a"] * 4},
        {"view": [f"r{i:04d}" for i in range(300)], "owners": ["r0000"] * 4},  # too many replicas
    ]
    for raw in bad:
        assert parse_plan(raw, 4, 100) is None, raw


def test_announced_loads_keep_only_what_is_well_formed() -> None:
    raw = {"0": 0.5, "1": -1, "2": float("nan"), "3": "busy", "x": 1.0, "9": 1.0, "4": 1e12, "5": True}
    assert parse_loads(raw, 8) == {0: 0.5, 4: 1000.0, 5: 1.0}
    assert parse_loads(["0", 1], 8) == {}
    assert len(parse_loads({str(k): 1.0 for k in range(10_000)}, 8)) == 8
