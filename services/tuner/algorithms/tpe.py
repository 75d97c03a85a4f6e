"""Tree-structured Parzen Estimator: multivariate, with a local constant liar for parallel trials.

Details: :class:`TpeTuner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import BaseTuner, Internal, Observation
from .encoding import Encoding
from .parzen import ParzenEstimator

__all__ = ["TpeSettings", "TpeTuner"]



@dataclass(frozen=True)
class TpeSettings:
    """TPE's own arguments. The first six are NNI's ``tpe_args`` keys; defaults were tuned on
    benchmarks/tuner_quality.py with seeds the reported numbers do not use (see README_tuners.md)."""

    constant_liar_type: str | None = "worst"
    n_startup_jobs: int = 10
    n_ei_candidates: int = 64
    linear_forgetting: int = 25
    prior_weight: float = 1.0
    gamma: float = 0.1  # the good group's share of finished trials (optuna's rule; NNI's is gamma * sqrt(n))
    max_below: int = 25  # at most this many trials in the good group
    bandwidth: float = 0.5  # kernel width, as a fraction of a parameter's range, at n = 1
    shrink_power: float = 0.6
    min_bandwidth: float = 0.005
    liar_width: float = 0.5  # width of a pending trial's kernel relative to the others (local liar)
    # Each EI candidate is the best trial with about this many coordinates redrawn from l(x) (each
    # with probability k / d, at least one); 0, or k >= d: candidates drawn from l(x) whole.
    local_coordinates: float = 2.0
    # The l(x) draws that supply those coordinates come from kernels this many times wider (the
    # ranking by l(x) / g(x) keeps the usual widths): moves that leave a basin are among the
    # candidates, and the ranking still prefers the likely ones.
    proposal_width: float = 3.0
    max_history: int = 1000  # bad trials beyond this many (the oldest) are left out of g(x)


class _Rows:
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
    """NNI's ``TPE`` tuner.

    One suggestion, after a quasi-random (scrambled Sobol) start of ``n_startup_jobs`` trials:

    1. Sort finished trials by loss. The best ``ceil(gamma * n)`` (at most 25) form the "good" density
       l(x), the rest the "bad" density g(x). Both are multivariate Parzen estimators
       (:mod:`.parzen`); older bad trials fade (hyperopt's linear forgetting).
    2. Kernel widths shrink as ``bandwidth * n ** -shrink_power`` with n the number of finished trials:
       faster than Scott's rule, so the search tightens around good regions within ~100 trials.
    3. Draw ``n_ei_candidates`` points from l(x) and keep the unseen one maximising l(x) / g(x),
       which is proportional to expected improvement under TPE's model (Bergstra et al., 2011).
       In more than two dimensions each candidate is the best trial with about
       ``local_coordinates`` (2) of its coordinates taken from such a draw, the others kept: in
       10-20 dimensions a whole draw from l(x) moves every coordinate at once and rarely
       improves, while changing a few around the best does; those draws come from kernels
       ``proposal_width`` (3) times wider, so that moves out of the best's basin are among the
       candidates (benchmarks/README_tuners.md).

    Parallel trials (pending: suggested, no result yet) use a *local* constant liar: each pending point
    is counted as a bad result (the "worst" lie), but with a kernel half as wide as the others. That
    keeps parallel suggestions apart without making the whole good region look bad, which is what
    slows a classic liar down with 8 or more trials in flight. ``constant_liar_type`` "mean" or "best"
    selects the classic liar with that value; ``None`` ignores pending trials (duplicates are still
    prevented).
    """

    name = "TPE"

    def __init__(
        self, *, seed: int | None = None, minimize: bool = True, settings: TpeSettings | None = None
    ):
        super().__init__(seed=seed, minimize=minimize)
        self.settings = settings or TpeSettings()
        self.encoding = Encoding([])

    # ------------------------------------------------------------ bookkeeping

    def _on_search_space(self) -> None:
        self.encoding = Encoding(self.specs)
        self._points = _Rows(self.encoding.dim)
        self._losses = _Rows(1)
        self._startup_used = 0
        self._startup: np.ndarray | None = None  # drawn on first use (_startup_points)

    def _on_observation(self, observation: Observation) -> None:
        self._points.append(self.encoding.encode(observation.internal))
        self._losses.append(np.array([observation.loss]))

    # ------------------------------------------------------------ suggesting

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        finished = self._points.size
        if finished + len(self.pending) < self.settings.n_startup_jobs or finished < 2:
            return self._startup_point(parameter_id, rng)
        return self._model_point(rng)

    def _startup_point(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        """A scrambled-Sobol point: the first trials cover the space better than random draws.

        Integer parameter ids pick their own point, so a tuner rebuilt after a restart hands
        out the same start-up points as one that never stopped; other ids take the next one.
        """
        from scipy.special import ndtri  # lazily: `tunebus create` builds tuners to check them

        if isinstance(parameter_id, int) and parameter_id >= 0:
            index = parameter_id
        else:
            index = self._startup_used
            self._startup_used += 1
        startup = self._startup_points()
        if index >= len(startup):
            return self._sample_prior(rng)
        u = startup[index]
        point = np.empty((1, self.encoding.dim))
        for i, column in enumerate(self.encoding.columns):
            if column.kind == "categorical":
                point[0, i] = min(int(u[i] * column.size), column.size - 1)
            elif column.kind == "normal":
                point[0, i] = ndtri(min(max(u[i], 1e-9), 1 - 1e-9))
            else:
                point[0, i] = u[i]
        return self.encoding.decode(self.encoding.snap(self.encoding.mask_inactive(point))[0])

    def _startup_points(self) -> np.ndarray:
        """The scrambled-Sobol start-up points of this search space and seed, drawn once."""
        if self._startup is None:
            from scipy.stats import qmc  # lazily: `tunebus create` builds tuners to check them

            count = 2 ** math.ceil(math.log2(max(self.settings.n_startup_jobs, 1)))
            self._startup = qmc.Sobol(self.encoding.dim, scramble=True, seed=self.seed).random(count)
        return self._startup

    def _model_point(self, rng: np.random.Generator) -> Internal:
        points, losses, liars = self._training_data()
        below, above = self._split(losses)
        good = self._estimator(points[below], np.ones(len(below)))
        bad = self._estimator(points[above], self._forgetting_weights(len(above)))
        proposals, width = good, self.settings.proposal_width
        if self._is_local() and width != 1.0:
            proposals = self._estimator(points[below], np.ones(len(below)), scale=width)
        candidates = self._around_best(proposals.sample(self.settings.n_ei_candidates, rng), rng)
        scores = good.log_pdf(candidates) - self._bad_log_pdf(bad, len(above), liars, candidates)
        for index in np.argsort(-scores, kind="stable"):
            internal = self.encoding.decode(candidates[index])
            if not self._is_seen(internal):
                return internal
        return self._sample_prior(rng)  # every candidate repeats a trial: deduplication takes over

    def _is_local(self) -> bool:
        """Whether candidates are the best trial with a few coordinates changed (in more than
        ``local_coordinates`` dimensions), not whole draws from l(x)."""
        return 0 < self.settings.local_coordinates < self.encoding.dim

    def _around_best(self, drawn: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``drawn`` (points from l(x)) turned into the best finished trial with a few of its
        coordinates from them: each with probability ``local_coordinates / d``, at least one."""
        if not self._is_local():
            return drawn
        d = self.encoding.dim
        share = self.settings.local_coordinates / d
        best = self._points.rows[int(np.argmin(self._losses.rows[:, 0]))]
        base = np.broadcast_to(best, drawn.shape)
        changed = rng.random(drawn.shape) < share
        none = ~changed.any(axis=1)
        changed[none, rng.integers(d, size=int(none.sum()))] = True
        # A coordinate the draw has inactive (its nested choice differs) keeps the best's value.
        points = np.where(changed & ~np.isnan(drawn), drawn, base)
        for i, column in enumerate(self.encoding.columns):
            if column.parent is not None:  # its nested choice moved: the draw's own values follow
                parent = column.parent[0]
                moved = points[:, parent] != base[:, parent]
                points[moved, i] = drawn[moved, i]
        return self.encoding.snap(self.encoding.mask_inactive(points))

    def _training_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points and losses the densities learn from, and the pending points left for a local liar."""
        points, losses = self._points.rows, self._losses.rows[:, 0]
        pending = np.array([self.encoding.encode(p) for p in self.pending.values()]).reshape(
            -1, self.encoding.dim
        )
        liar = self.settings.constant_liar_type
        if liar in ("mean", "best") and len(pending):  # the classic liar: pending trials join the data
            lie = losses.mean() if liar == "mean" else losses.min()
            points = np.vstack([points, pending])
            losses = np.append(losses, np.full(len(pending), lie))
        return points, losses, pending if liar == "worst" else pending[:0]

    def _split(self, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the good (below) and bad (above) trials in trial order; ties favour the earlier."""
        s = self.settings
        n_below = min(max(math.ceil(s.gamma * len(losses)), 1), s.max_below)
        order = np.argsort(losses, kind="stable")
        above = np.sort(order[n_below:])[-s.max_history :]  # the oldest bad trials weigh ~0 anyway
        return np.sort(order[:n_below]), above

    def _forgetting_weights(self, n: int) -> np.ndarray:
        """Hyperopt's linear forgetting: weights ramp up from the oldest bad trial to the newest ones."""
        keep = self.settings.linear_forgetting
        if n <= keep:
            return np.ones(n)
        return np.concatenate([np.linspace(1.0 / n, 1.0, n - keep), np.ones(keep)])

    def _bad_log_pdf(
        self, bad: ParzenEstimator, n_bad: int, liars: np.ndarray, points: np.ndarray
    ) -> np.ndarray:
        """log g(x), with each pending point added as a narrow bad kernel (the local liar)."""
        log_g = bad.log_pdf(points)
        if not len(liars):
            return log_g
        near = self._estimator(liars, np.ones(len(liars)), scale=self.settings.liar_width, prior_weight=0.0)
        share = len(liars) / (n_bad + len(liars) + self.settings.prior_weight)
        return np.logaddexp(log_g + math.log1p(-share), near.log_pdf(points) + math.log(share))

    def _estimator(
        self, centers: np.ndarray, weights: np.ndarray, scale: float = 1.0, prior_weight: float | None = None
    ) -> ParzenEstimator:
        s = self.settings
        width = scale * s.bandwidth * max(self._points.size, 1) ** -s.shrink_power
        # Integer and quantised columns never get narrower than their step: finer is meaningless.
        floor = np.maximum([c.step for c in self.encoding.columns], s.min_bandwidth)
        bandwidth = np.clip(np.full(self.encoding.dim, width), floor, 1.0)
        weight = s.prior_weight if prior_weight is None else prior_weight
        return ParzenEstimator(self.encoding, centers, weights, bandwidth, weight)
