"""A multivariate Parzen estimator over the model space of :mod:`.encoding`.

The density is a weighted mixture with one component per observation plus, optionally, one
*prior* component (the search space itself). Each component is a product of one-dimensional
kernels, so it models the parameters jointly (optuna's ``multivariate=True``) rather than one at a
time (hyperopt's TPE):

* bounded / ordinal columns: a normal kernel truncated to [0, 1]; the prior is U(0, 1);
* normal columns: a normal kernel; the prior is N(0, 1);
* categorical columns: the observed option gets one unit of weight on top of ``prior_weight``
  spread over all options (optuna's and hyperopt's rule); the prior is uniform.

A NaN centre (an inactive parameter of that observation, or the prior component) stands for the
column's prior, so observations from other branches of a nested choice still count elsewhere.
"""

from __future__ import annotations

import math

import numpy as np

from .encoding import Encoding

__all__ = ["ParzenEstimator"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class ParzenEstimator:
    """A mixture density over model-space points; ``sample`` and ``log_pdf`` are vectorised."""

    def __init__(
        self,
        encoding: Encoding,
        centers: np.ndarray,
        weights: np.ndarray,
        bandwidth: np.ndarray,
        prior_weight: float,
    ) -> None:
        self.encoding = encoding
        if prior_weight > 0:
            centers = np.vstack([centers, np.full((1, encoding.dim), np.nan)])
            weights = np.append(weights, prior_weight)
        self.centers = centers
        self.log_weights = np.log(weights / weights.sum())
        self.bandwidth = np.broadcast_to(bandwidth, centers.shape)
        self._numeric = self._numeric_kernels()
        self._tables = {int(i): self._categorical_table(int(i), prior_weight) for i in encoding.categorical}

    def _numeric_kernels(self) -> dict[str, np.ndarray]:
        """Per-component constants of the numeric columns, computed once per estimator."""
        columns = np.concatenate([self.encoding.bounded, self.encoding.normal]).astype(int)
        truncated = np.isin(columns, self.encoding.bounded)
        c, w = self.centers[:, columns], self.bandwidth[:, columns]
        prior = np.isnan(c)
        c = np.where(prior, np.where(truncated, 0.5, 0.0), c)
        w = np.where(prior, 1.0, w)
        norm = -np.log(w) - _LOG_SQRT_2PI - np.where(truncated, _log_mass(c, w), 0.0)
        # The prior of a bounded column is U(0, 1): a zero quadratic term and a zero constant.
        uniform = prior & truncated
        precision = np.where(uniform, 0.0, 1.0 / (w * w))
        # log k(x) = norm - precision * (x - c)^2 / 2, expanded so that summing over columns of
        # all points and components becomes matrix products (BLAS) instead of a 3-d temporary.
        return {
            "columns": columns,
            "quadratic": -0.5 * precision.T,
            "linear": (precision * c).T,
            "constant": (np.where(uniform, 0.0, norm) - 0.5 * precision * c * c).T,
        }

    def _categorical_table(self, column: int, prior_weight: float) -> np.ndarray:
        """Log-probabilities of each option under each component (rows) of a categorical column."""
        size = self.encoding.columns[column].size
        table = np.full((len(self.centers), size), max(prior_weight, 1e-3) / size)
        observed = ~np.isnan(self.centers[:, column])
        table[np.flatnonzero(observed), self.centers[observed, column].astype(int)] += 1.0
        table[~observed] = 1.0  # the prior (or an inactive observation): every option alike
        return np.log(table / table.sum(axis=1, keepdims=True))

    # ------------------------------------------------------------ sampling

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``count`` points (inactive nested columns are NaN; integers and q-values snapped)."""
        which = rng.choice(len(self.centers), size=count, p=np.exp(self.log_weights))
        centers, widths = self.centers[which], self.bandwidth[which]
        out = np.empty((count, self.encoding.dim))
        for i in self.encoding.bounded:
            out[:, i] = _truncated_normal(rng, centers[:, i], widths[:, i])
        for i in self.encoding.normal:
            prior = np.isnan(centers[:, i])
            out[:, i] = rng.normal(np.where(prior, 0.0, centers[:, i]), np.where(prior, 1.0, widths[:, i]))
        for c, table in self._tables.items():
            cumulative = np.cumsum(np.exp(table[which]), axis=1)
            draws = rng.random(count)[:, None] * cumulative[:, -1:]
            out[:, c] = np.minimum((draws > cumulative).sum(axis=1), table.shape[1] - 1)
        return self.encoding.snap(self.encoding.mask_inactive(out))

    # ------------------------------------------------------------ density

    def log_pdf(self, points: np.ndarray) -> np.ndarray:
        """Log-density of each point, over the columns active in that point."""
        per_component = np.broadcast_to(self.log_weights, (len(points), len(self.log_weights))).copy()
        kernels = self._numeric
        if len(kernels["columns"]):
            x = points[:, kernels["columns"]]  # (points, columns); inactive columns count as absent
            active = (~np.isnan(x)).astype(float)
            x = np.nan_to_num(x)
            per_component += (
                (x * x) @ kernels["quadratic"] + x @ kernels["linear"] + active @ kernels["constant"]
            )
        for i, table in self._tables.items():
            x = points[:, i]
            active = ~np.isnan(x)
            if active.any():
                per_component[active] += table[:, x[active].astype(int)].T
        return _logsumexp_rows(per_component)


def _truncated_normal(rng: np.random.Generator, centers: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Draws from N(c, w) truncated to [0, 1] by inverting the CDF; NaN centres draw from U(0, 1)."""
    from scipy.special import ndtr, ndtri  # lazily: `tunebus create` builds tuners to check them

    prior = np.isnan(centers)
    c = np.where(prior, 0.5, centers)
    w = np.where(prior, 1.0, widths)
    low, high = ndtr(-c / w), ndtr((1.0 - c) / w)
    u = low + rng.random(len(c)) * (high - low)
    x = c + w * ndtri(np.clip(u, 1e-300, 1 - 1e-16))
    return np.clip(np.where(prior, rng.random(len(c)), x), 0.0, 1.0)


def _log_mass(c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log P(0 <= N(c, w) <= 1), computed stably in the tails.

    Only kernels within 8 widths of an edge lose measurable mass (< 1e-15 otherwise), so the
    costly normal CDF is evaluated for those alone: most kernels sit well inside [0, 1].
    """
    from scipy.special import log_ndtr  # lazily: `tunebus create` builds tuners to check them

    out = np.zeros(np.shape(c))
    near = np.minimum(c, 1.0 - c) < 8.0 * w
    cn, wn = c[near], w[near]
    log_b, log_a = log_ndtr((1.0 - cn) / wn), log_ndtr(-cn / wn)
    out[near] = log_b + np.log1p(-np.exp(np.minimum(log_a - log_b, -1e-12)))
    return out


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=1)) without scipy's per-call overhead (this runs on every suggestion)."""
    top = a.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.exp(a - top).sum(axis=1)) + top[:, 0]
