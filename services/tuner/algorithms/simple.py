"""The model-free tuners: Random, GridSearch (NNI's semantics), Anneal and Evolution."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from shared.search_space import ParamPath, ParamSpec, is_active, sample_internal, to_value

from .base import BaseTuner, Internal, Observation
from .encoding import Encoding
from .errors import NoMoreTrials

__all__ = ["AnnealTuner", "EvolutionTuner", "GridSearchTuner", "RandomTuner"]


class RandomTuner(BaseTuner):
    """NNI's ``Random``: independent draws from the search space (the prior), deduplicated."""

    name = "Random"


# ---------------------------------------------------------------- grid search


class GridSearchTuner(BaseTuner):
    """NNI's ``GridSearch``: every combination of categorical values, numerical ranges on a grid
    that is subdivided epoch by epoch (0.5, then 0.25 and 0.75, ... of the prior's CDF).

    Quantised parameters stop subdividing once neighbouring grid points round to the same value,
    so a space of choice / randint / q-uniform parameters is finite and ends in ``NoMoreTrials``.
    """

    name = "GridSearch"

    def _on_search_space(self) -> None:
        numeric = [i for i, spec in enumerate(self.specs) if not spec.categorical]
        self._levels: dict[int, list[float]] = {i: [0.5] for i in numeric}
        self._intervals: dict[int, list[tuple[float, float]]] = {
            i: [iv for iv in ((0.0, 0.5), (0.5, 1.0)) if self._distinct(i, *iv)] for i in numeric
        }
        self._old: dict[int, int] = {i: 0 for i in numeric}  # grid indices below this were done before
        self._epoch = 0
        self._points = self._epoch_points()

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        while True:
            for point in self._points:
                if not self._is_seen(point):
                    return point
            if not self._subdivide():
                raise NoMoreTrials(f"tuner '{self.name}': the search space is fully explored")
            self._points = self._epoch_points()

    def _value(self, column: int, cdf: float) -> float:
        """Internal value at a position of the parameter's prior CDF."""
        from scipy.special import ndtri  # lazily: `tunebus create` builds tuners to check them

        spec = self.specs[column]
        if spec.normal:
            return (
                spec.mu + spec.sigma * float(ndtri(cdf))
                if 0 < cdf < 1
                else float(np.sign(cdf - 0.5) * np.inf)
            )
        return spec.low + (spec.high - spec.low) * cdf

    def _distinct(self, column: int, left: float, right: float) -> bool:
        """Whether two CDF positions give different values (so the interval is worth splitting)."""
        a, b = self._value(column, left), self._value(column, right)
        if np.isinf(a) or np.isinf(b):
            return True
        spec = self.specs[column]
        return bool(to_value(spec, a) != to_value(spec, b))

    def _subdivide(self) -> bool:
        """Halve every interval that still separates distinct values; False when none is left."""
        grew = False
        for column, intervals in self._intervals.items():
            self._old[column] = len(self._levels[column])
            kept: list[tuple[float, float]] = []
            for left, right in intervals:
                mid = (left + right) / 2
                split_left, split_right = (
                    self._distinct(column, left, mid),
                    self._distinct(column, mid, right),
                )
                # The ends 0 and 1 are never grid points themselves, so a mid next to them is new.
                if (split_left or left == 0.0) and (split_right or right == 1.0):
                    self._levels[column].append(mid)
                    grew = True
                kept += [iv for iv, ok in (((left, mid), split_left), ((mid, right), split_right)) if ok]
            self._intervals[column] = kept
        self._epoch += 1
        return grew

    def _epoch_points(self) -> Iterator[Internal]:
        yield from self._walk(0, {}, False)

    def _walk(self, index: int, partial: Internal, fresh: bool) -> Iterator[Internal]:
        if index == len(self.specs):
            if fresh or self._epoch == 0:
                yield dict(partial)
            return
        spec = self.specs[index]
        if not is_active(spec, partial):
            yield from self._walk(index + 1, partial, fresh)
            return
        if spec.categorical:
            # Lazily: a randint may span billions of values.
            options: Iterable[tuple[float, bool]] = ((float(i), False) for i in range(spec.size))
        else:
            old = self._old[index]
            options = [(self._value(index, c), j >= old) for j, c in enumerate(self._levels[index])]
        for value, new in options:
            partial[spec.path] = value
            yield from self._walk(index + 1, partial, fresh or new)
        del partial[spec.path]


# ---------------------------------------------------------------- anneal


class AnnealTuner(BaseTuner):
    """``Anneal``: simulated-annealing-style search in the manner of hyperopt's ``anneal``.

    Each suggestion perturbs a good earlier trial (its rank drawn from a geometric distribution, so
    the best is the likeliest parent). The perturbation shrinks as 1 / (1 + 0.1 * trials): numbers
    move by a normal step of that fraction of their range, and each categorical is redrawn with that
    probability. Until ``n_startup`` trials are known it samples the prior.
    """

    name = "Anneal"
    n_startup = 5
    shrink_coef = 0.1
    avg_best_idx = 2.0

    def _on_search_space(self) -> None:
        self.encoding = Encoding(self.specs)

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        if len(self.history) < self.n_startup:
            return self._sample_prior(rng)
        ranked = sorted(self.history, key=lambda o: o.loss)
        rank = min(int(rng.geometric(1.0 / self.avg_best_idx)) - 1, len(ranked) - 1)
        parent = self.encoding.encode(ranked[rank].internal)
        shrink = 1.0 / (1.0 + self.shrink_coef * len(self.history))
        return self._perturb(parent, shrink, rng)

    def _perturb(self, parent: np.ndarray, shrink: float, rng: np.random.Generator) -> Internal:
        child = parent.copy()
        prior = self.encoding.encode(self._sample_prior(rng))
        for i, column in enumerate(self.encoding.columns):
            if np.isnan(child[i]):
                child[i] = prior[i]  # a branch the parent never took: start from the prior
            elif column.kind == "categorical":
                child[i] = rng.integers(column.size) if rng.random() < shrink else child[i]
            elif column.kind == "normal":
                child[i] = child[i] + rng.normal(0.0, shrink)
            else:  # bounded and ordinal columns live in [0, 1]; reflect steps that leave it
                step = child[i] + rng.normal(0.0, shrink)
                child[i] = 1.0 - abs(1.0 - abs(step) % 2.0)
        points = self.encoding.snap(self.encoding.mask_inactive(self._fill_nested(child, rng)[None, :]))
        return self.encoding.decode(points[0])

    def _fill_nested(self, child: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Columns that became active through a changed parent need a value of their own."""
        for i, column in enumerate(self.encoding.columns):
            if np.isnan(child[i]):
                child[i] = self.encoding.encode({column.spec.path: sample_internal(column.spec, rng)})[i]
        return child


# ---------------------------------------------------------------- evolution


class EvolutionTuner(BaseTuner):
    """NNI's ``Evolution`` (naive evolution, Real et al. 2017).

    The first ``population_size`` trials are random. After that, two random members of the
    population are compared: the better one is copied with one random parameter redrawn from the
    prior (its nested parameters too, if a nested choice changed), and the worse one leaves the
    population. Every finished trial joins the population.
    """

    name = "Evolution"

    def __init__(self, *, seed: int | None = None, minimize: bool = False, population_size: int = 32):
        super().__init__(seed=seed, minimize=minimize)
        self.population_size = population_size
        self.population: list[Observation] = []

    def _on_search_space(self) -> None:
        self.population = []

    def _on_observation(self, observation: Observation) -> None:
        self.population.append(observation)

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        started = len(self.history) + len(self.pending)
        if started < self.population_size or len(self.population) < 2:
            return self._sample_prior(rng)
        first, second = rng.choice(len(self.population), size=2, replace=False)
        a, b = self.population[first], self.population[second]
        winner, loser = (a, b) if a.loss <= b.loss else (b, a)
        self.population.remove(loser)
        return self._mutate(winner.internal, rng)

    def _mutate(self, parent: Internal, rng: np.random.Generator) -> Internal:
        active = [spec for spec in self.specs if spec.path in parent]
        target = active[int(rng.integers(len(active)))]
        child: Internal = {}
        for spec in self.specs:
            if not is_active(spec, child):
                continue
            redraw = spec.path == target.path or spec.path not in parent or _under(spec, target.path)
            child[spec.path] = sample_internal(spec, rng) if redraw else parent[spec.path]
        return child


def _under(spec: ParamSpec, path: ParamPath) -> bool:
    """Whether ``spec`` lives inside the nested choice at ``path``."""
    return len(spec.path) > len(path) and spec.path[: len(path)] == path
