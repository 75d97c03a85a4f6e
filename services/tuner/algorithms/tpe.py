"""Tree-structured Parzen Estimator, multivariate, with a constant liar for parallel trials.

One suggestion, after a quasi-random (scrambled Sobol) start:

1. Sort finished trials by loss; pending trials join them with a lie (by default the worst loss
   seen) so parallel suggestions are pushed away from each other.
2. The best ``n_below`` form the "good" density l(x), the rest the "bad" density g(x); both are
   multivariate Parzen estimators (:mod:`.parzen`) whose bandwidth shrinks as data accumulate.
3. Draw ``n_ei_candidates`` points from l(x) and keep the one maximising l(x) / g(x), which is
   proportional to expected improvement under TPE's model (Bergstra et al., 2011).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtri
from scipy.stats import qmc

from .base import BaseTuner, Internal, Observation
from .encoding import Encoding
from .parzen import ParzenEstimator

__all__ = ["TpeSettings", "TpeTuner"]

LIAR_TYPES = ("worst", "mean", "best")


@dataclass(frozen=True)
class TpeSettings:
    """TPE's own arguments (NNI's ``tpe_args`` keys; defaults tuned on the benchmarks)."""

    constant_liar_type: str | None = "worst"
    n_startup_jobs: int = 10
    n_ei_candidates: int = 64
    linear_forgetting: int = 25
    prior_weight: float = 1.0
    gamma: float = 0.1
    max_below: int = 25
    bandwidth: float = 0.2
    min_bandwidth: float = 0.005
    rank_weights: float = 0.0
    split_on_finished: bool = False
    local_fraction: float = 0.0
    min_finished: int = 2
    adaptive: float = 0.0
    max_bandwidth: float = 1.0
    shrink_power: float = 0.0
    local_scale: float = 0.5


class _Growing:
    """A float matrix that grows by rows with amortised O(1) appends."""

    def __init__(self, columns: int) -> None:
        self._data = np.empty((64, columns))
        self.size = 0

    def append(self, row: np.ndarray) -> None:
        if self.size == len(self._data):
            self._data = np.vstack([self._data, np.empty_like(self._data)])
        self._data[self.size] = row
        self.size += 1

    @property
    def rows(self) -> np.ndarray:
        return self._data[: self.size]


class TpeTuner(BaseTuner):
    """NNI's ``TPE`` tuner (see the module docstring for the algorithm)."""

    name = "TPE"

    def __init__(
        self, *, seed: int | None = None, minimize: bool = True, settings: TpeSettings | None = None
    ):
        super().__init__(seed=seed, minimize=minimize)
        self.settings = settings or TpeSettings()
        self.encoding: Encoding | None = None

    # ------------------------------------------------------------ bookkeeping

    def _on_search_space(self) -> None:
        self.encoding = Encoding(self.specs)
        self._points = _Growing(self.encoding.dim)
        self._losses = _Growing(1)
        self._startup_used = 0
        startup = max(self.settings.n_startup_jobs, 1)
        sobol = qmc.Sobol(self.encoding.dim, scramble=True, seed=self.seed)
        self._startup = sobol.random(2 ** math.ceil(math.log2(startup)))

    def _on_observation(self, observation: Observation) -> None:
        assert self.encoding is not None
        self._points.append(self.encoding.encode(observation.internal))
        self._losses.append(np.array([observation.loss]))

    # ------------------------------------------------------------ suggesting

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        finished = self._points.size
        started = finished + len(self.pending)
        if started < self.settings.n_startup_jobs or finished < self.settings.min_finished:
            return self._startup_point(rng)
        return self._model_point(rng)

    def _startup_point(self, rng: np.random.Generator) -> Internal:
        """The next scrambled-Sobol point: spreads the first trials better than random draws."""
        assert self.encoding is not None
        if self._startup_used >= len(self._startup):
            return self._sample_prior(rng)
        u = self._startup[self._startup_used].copy()
        self._startup_used += 1
        point = np.empty((1, self.encoding.dim))
        for i, column in enumerate(self.encoding.columns):
            if column.kind == "categorical":
                point[0, i] = min(int(u[i] * column.size), column.size - 1)
            elif column.kind == "normal":
                point[0, i] = ndtri(min(max(u[i], 1e-9), 1 - 1e-9))
            else:
                point[0, i] = u[i]
        point = self.encoding.snap(self.encoding.mask_inactive(point))
        return self.encoding.decode(point[0])

    def _model_point(self, rng: np.random.Generator) -> Internal:
        assert self.encoding is not None
        points, losses = self._with_liars()
        below, above = self._split(losses)
        good = self._estimator(points[below], self._rank_weights(losses[below]))
        bad = self._estimator(points[above], self._forgetting_weights(above))
        candidates = good.sample(self.settings.n_ei_candidates, rng)
        n_local = int(self.settings.local_fraction * len(candidates))
        if n_local:
            best = points[below][np.argmin(losses[below])]
            local = self._estimator(best[None, :], np.ones(1), scale=self.settings.local_scale, prior=0.0)
            candidates = np.vstack([candidates, local.sample(n_local, rng)])
        scores = good.log_pdf(candidates) - bad.log_pdf(candidates)
        for index in np.argsort(-scores, kind="stable"):
            internal = self.encoding.decode(candidates[index])
            if not self._is_seen(internal):
                return internal
        return self._sample_prior(rng)  # every candidate repeats a trial: let deduplication decide

    def _with_liars(self) -> tuple[np.ndarray, np.ndarray]:
        """Finished points and losses, plus pending points with the liar's loss."""
        assert self.encoding is not None
        points, losses = self._points.rows, self._losses.rows[:, 0]
        liar = self.settings.constant_liar_type
        if not self.pending or liar is None:
            return points, losses
        lie = {"worst": losses.max(), "mean": losses.mean(), "best": losses.min()}[liar]
        pending = np.array([self.encoding.encode(p) for p in self.pending.values()])
        return np.vstack([points, pending]), np.append(losses, np.full(len(pending), lie))

    def _split(self, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the good (below) and bad (above) groups; ties keep the earlier trial good."""
        s = self.settings
        n = self._points.size if s.split_on_finished else len(losses)
        n_below = min(max(math.ceil(s.gamma * n), 1), s.max_below)
        order = np.argsort(losses, kind="stable")
        return np.sort(order[:n_below]), np.sort(order[n_below:])

    def _rank_weights(self, losses: np.ndarray) -> np.ndarray:
        ranks = np.argsort(np.argsort(losses, kind="stable"), kind="stable")
        return np.exp(-self.settings.rank_weights * ranks / max(len(losses), 1))

    def _forgetting_weights(self, indices: np.ndarray) -> np.ndarray:
        """Hyperopt's linear forgetting: older bad trials fade once there are many of them."""
        n, keep = len(indices), self.settings.linear_forgetting
        if n <= keep:
            return np.ones(n)
        return np.concatenate([np.linspace(1.0 / n, 1.0, n - keep), np.ones(keep)])

    def _estimator(
        self, centers: np.ndarray, weights: np.ndarray, scale: float = 1.0, prior: float | None = None
    ) -> ParzenEstimator:
        assert self.encoding is not None
        s = self.settings
        power = s.shrink_power or 1.0 / (self.encoding.dim + 4)
        factor = max(len(centers) if not s.shrink_power else self._points.size, 1) ** (-power)
        width = np.full(self.encoding.dim, scale * s.bandwidth * factor)
        if s.adaptive and len(centers) > 1:
            with np.errstate(invalid="ignore"):
                spread = np.nanstd(centers, axis=0)
            width = np.where(np.isnan(spread), width, scale * s.adaptive * spread * factor)
        steps = np.array([c.step for c in self.encoding.columns])
        bandwidth = np.clip(width, np.maximum(steps, s.min_bandwidth), s.max_bandwidth)
        return ParzenEstimator(
            self.encoding, centers, weights, bandwidth, s.prior_weight if prior is None else prior
        )
