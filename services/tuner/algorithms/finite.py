"""Finite search spaces: how many distinct points a space has, and enumerating them.

A space is finite when every parameter has finitely many user-facing values: ``choice``,
``randint`` and the clipped ``quniform`` / ``qloguniform``. Tuners use this to detect exhaustion
(NNI's ``NoMoreTrialError``) and to find an unseen point when an algorithm repeats itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from shared.search_space import ParamPath, ParamSpec, is_active, to_value

__all__ = ["enumerate_points", "finite_values", "space_size"]

#: Above this many points a space is treated as unbounded: enumerating it would cost more than
#: any experiment can run trials.
ENUMERATION_LIMIT = 200_000


def finite_values(spec: ParamSpec) -> list[float] | None:
    """Internal values giving each distinct user-facing value once, or None if there are infinitely many."""
    if spec.categorical:
        # A wide randint is finite but too large to list: treat it as the continuous range it is.
        return [float(i) for i in range(spec.size)] if spec.size <= ENUMERATION_LIMIT else None
    clip = spec.clip
    if clip is None or spec.q is None:
        return None
    low, high = clip
    first, last = math.floor(low / spec.q), math.ceil(high / spec.q)
    if last - first > ENUMERATION_LIMIT:
        return None
    by_value: dict[float, float] = {}
    candidates = [min(max(k * spec.q, low), high) for k in range(first, last + 1)]
    for value in [low, *candidates, high]:
        internal = math.log(value) if spec.log else value
        if to_value(spec, internal) == value:  # only values that rounding can actually produce
            by_value.setdefault(value, internal)
    return [by_value[v] for v in sorted(by_value)]


def space_size(specs: Sequence[ParamSpec]) -> int | None:
    """Number of distinct parameter dicts, or None if infinite (or too many to enumerate)."""
    size = _subspace_size(specs, ())
    return size if size is not None and size <= ENUMERATION_LIMIT else None


def _subspace_size(specs: Sequence[ParamSpec], prefix: ParamPath) -> int | None:
    total = 1
    for spec in specs:
        if spec.path[:-1] != prefix:
            continue  # only the direct children of this (sub)space
        values = finite_values(spec)
        if values is None:
            return None
        if spec.nested:
            options = [_subspace_size(specs, (*spec.path, i)) for i in range(spec.size)]
            if any(o is None for o in options):
                return None
            total *= sum(o for o in options if o is not None)
        else:
            total *= len(values)
        if total > ENUMERATION_LIMIT:
            return None
    return total


def enumerate_points(specs: Sequence[ParamSpec]) -> Iterator[dict[ParamPath, float]]:
    """Every point of a finite space as internal values, in a fixed order (inactive parameters left out)."""
    grids = [finite_values(spec) for spec in specs]
    if any(g is None for g in grids):
        raise ValueError("the search space is not finite")
    yield from _walk(specs, [g or [] for g in grids], 0, {})


def _walk(
    specs: Sequence[ParamSpec], grids: list[list[float]], index: int, partial: dict[ParamPath, float]
) -> Iterator[dict[ParamPath, float]]:
    if index == len(specs):
        yield dict(partial)
        return
    spec = specs[index]
    if not is_active(spec, partial):
        yield from _walk(specs, grids, index + 1, partial)
        return
    for value in grids[index]:
        partial[spec.path] = value
        yield from _walk(specs, grids, index + 1, partial)
    del partial[spec.path]
