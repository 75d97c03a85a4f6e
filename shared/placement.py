"""Which replica of a sharded service owns each shard: by hash at first, then by measured load.

Hash placement (:func:`owner_of`) alone spreads the *shards* evenly but not the *work*: a few
busy experiments hash where they hash, and two replicas may share ten experiments 7:3. So each
replica measures how busy each shard keeps it (:class:`LoadMeter`: seconds spent in handlers per
second, smoothed) and announces it; the *leader*, the first of the live replicas in sorted order,
turns those loads into a :class:`Plan` (:class:`Planner`: from the hashed owners, a shard at a
time from the busiest replica to the least busy, while that lowers the busiest one's load by a
clear margin) and announces it too. Every replica follows the leader's plan while the plan's
replicas are the ones it sees itself; otherwise (the leader just changed, or has not planned yet)
the hashed owners. One decider, so replicas never disagree for longer than an announcement takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LoadMeter", "Plan", "Planner", "hashed_owners", "owner_of", "parse_loads", "parse_plan",
           "rebalance"]

#: Announced loads below this (busy seconds per second) are left out as idle.
IDLE_LOAD = 0.005
#: The most replicas a plan may name (announcements are bounded like every other input).
MAX_REPLICAS = 256


def owner_of(shard: int, replicas: Iterable[str]) -> str:
    """The replica that owns ``shard`` among the live ``replicas``: the ``shard mod n``-th, sorted."""
    members = sorted(set(replicas))
    if not members:
        raise ValueError("no replicas")
    return members[shard % len(members)]


def hashed_owners(count: int, view: tuple[str, ...]) -> tuple[str, ...]:
    """Every shard's owner by :func:`owner_of`: the placement before any load is known."""
    return tuple(owner_of(k, view) for k in range(count))


@dataclass(frozen=True)
class Plan:
    """The leader's placement: ``owners[k]`` owns shard ``k``, for the live replicas ``view``."""

    view: tuple[str, ...]
    owners: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"view": list(self.view), "owners": list(self.owners)}


def parse_plan(raw: object, count: int, max_name: int) -> Plan | None:
    """A plan from an announcement, or ``None`` if it is not a well-formed one for ``count`` shards."""
    if not isinstance(raw, dict):
        return None
    view, owners = raw.get("view"), raw.get("owners")
    if not isinstance(view, list) or not isinstance(owners, list):
        return None
    if not 0 < len(view) <= MAX_REPLICAS or len(owners) != count:
        return None
    if not all(isinstance(r, str) and 0 < len(r) <= max_name for r in view):
        return None
    members = set(view)
    if view != sorted(members) or not all(isinstance(o, str) and o in members for o in owners):
        return None
    return Plan(tuple(view), tuple(owners))


def parse_loads(raw: object, count: int) -> dict[int, float]:
    """Shard loads from an announcement (``{"3": 0.42}``); what is malformed is left out."""
    if not isinstance(raw, dict):
        return {}
    loads: dict[int, float] = {}
    for key, value in list(raw.items())[:count]:
        try:
            shard = int(key)
        except (TypeError, ValueError):
            continue
        if 0 <= shard < count and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            loads[shard] = min(float(value), 1_000.0)
    return loads


class LoadMeter:
    """How busy each shard keeps this replica: handler seconds per second, smoothed over ``tau``.

    Handlers of several experiments run side by side, so a replica's shards may add up to more
    than 1: the time a handler waits for the CPU counts, which is the demand a busier replica
    cannot meet.
    """

    def __init__(self, count: int, *, tau: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.tau = tau
        self.clock = clock
        self._busy = [0.0] * count
        self._rates = [0.0] * count
        self._last = clock()

    def add(self, shard: int, seconds: float) -> None:
        self._busy[shard] += max(0.0, seconds)

    def rates(self) -> dict[int, float]:
        """Fold the busy time since the last call into the smoothed rates; the shards not idle."""
        now = self.clock()
        elapsed = now - self._last
        if elapsed > 0:
            keep = math.exp(-elapsed / self.tau)
            for k, busy in enumerate(self._busy):
                self._rates[k] = self._rates[k] * keep + (busy / elapsed) * (1 - keep)
                self._busy[k] = 0.0
            self._last = now
        return {k: round(rate, 4) for k, rate in enumerate(self._rates) if rate >= IDLE_LOAD}


def rebalance(owners: tuple[str, ...], view: tuple[str, ...], loads: Mapping[int, float], *,
              frozen: Iterable[int] = (), min_gain: float = 0.05, min_share: float = 0.2) -> tuple[str, ...]:
    """``owners`` with shards moved, one at a time, from the busiest replica to the least busy.

    A move is made only if it lowers the busiest replica's load by ``min_gain`` and by
    ``min_share`` of it (so that noise in the measured loads moves nothing); each shard moves at
    most once per call, and ``frozen`` shards (moved lately: their load is still being measured
    again by the new owner) not at all. Deterministic: ties go to the first name or shard.
    """
    placed = list(owners)
    fixed = set(frozen)
    while True:
        per = {r: 0.0 for r in view}
        for shard, owner in enumerate(placed):
            per[owner] = per.get(owner, 0.0) + loads.get(shard, 0.0)
        busiest = min(view, key=lambda r: (-per[r], r))
        idlest = min(view, key=lambda r: (per[r], r))
        best: tuple[float, int] | None = None
        for shard, owner in enumerate(placed):
            load = loads.get(shard, 0.0)
            if owner != busiest or shard in fixed or load <= 0:
                continue
            peak = max(per[busiest] - load, per[idlest] + load)
            if best is None or peak < best[0]:
                best = (peak, shard)
        if best is None or per[busiest] - best[0] < max(min_gain, min_share * per[busiest]):
            return tuple(placed)
        placed[best[1]] = idlest
        fixed.add(best[1])


class Planner:
    """The leader's side: the plan for its view, rebalanced every ``every`` seconds from the loads.

    A moved shard stays put for ``settle`` seconds: its new owner's measure of it starts from
    nothing and the old owner's fades, so until then its load is taken as the higher of what it
    was when moved and what is reported now (:meth:`plan` is given the highest report per shard).
    """

    def __init__(self, count: int, *, every: float = 10.0, settle: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self.every = every
        self.settle = settle
        self.clock = clock
        self._plan: Plan | None = None
        self._planned_at = -math.inf
        self._moved: dict[int, tuple[float, float]] = {}  # shard -> (when moved, its load then)

    def plan(self, view: tuple[str, ...], loads: Mapping[int, float]) -> Plan:
        """The plan for ``view``: the hashed owners for a new view, then rebalanced now and then."""
        now = self.clock()
        if self._plan is None or self._plan.view != view:
            self._plan = Plan(view, hashed_owners(self.count, view))
            self._planned_at = now
            self._moved.clear()
            return self._plan
        if now - self._planned_at < self.every:
            return self._plan
        self._planned_at = now
        self._moved = {k: moved for k, moved in self._moved.items() if now - moved[0] < self.settle}
        settling = {k: max(loads.get(k, 0.0), then) for k, (_, then) in self._moved.items()}
        owners = rebalance(self._plan.owners, view, {**loads, **settling}, frozen=settling.keys())
        for shard, (old, new) in enumerate(zip(self._plan.owners, owners, strict=True)):
            if old != new:
                self._moved[shard] = (now, loads.get(shard, 0.0))
        self._plan = Plan(view, owners)
        return self._plan
