"""A multivariate Parzen estimator over the model space of :mod:`.encoding`.

The density is a weighted mixture with one component per observation plus one *prior* component
(the search space itself). Each component is a product of one-dimensional kernels, so it models
the parameters jointly (optuna's ``multivariate=True``) rather than one at a time (hyperopt's TPE):

* bounded / ordinal columns: a normal kernel truncated to [0, 1];
* normal columns: a normal kernel; the prior is N(0, 1);
* categorical columns: the observed option gets one unit of weight on top of ``prior_weight``
  spread over all options (optuna's and hyperopt's rule).

A NaN centre (an inactive parameter of that observation, or the prior component) stands for the
column's prior, so observations from other branches of a nested choice still count elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr, logsumexp, ndtr, ndtri

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
        prior = np.full((1, encoding.dim), np.nan)
        self.centers = np.vstack([centers, prior])
        total = np.append(weights, max(prior_weight, 1e-12))
        self.log_weights = np.log(total / total.sum())
        self.bandwidth = np.broadcast_to(bandwidth, (len(self.centers), encoding.dim))
        self._categorical_tables = {
            int(i): self._categorical_table(int(i), prior_weight) for i in encoding.categorical
        }

    def _categorical_table(self, column: int, prior_weight: float) -> np.ndarray:
        """Log-probabilities of each option under each component (rows) of a categorical column."""
        size = self.encoding.columns[column].size
        table = np.full((len(self.centers), size), max(prior_weight, 1e-12) / size)
        observed = ~np.isnan(self.centers[:, column])
        table[np.flatnonzero(observed), self.centers[observed, column].astype(int)] += 1.0
        return np.log(table / table.sum(axis=1, keepdims=True))

    # ------------------------------------------------------------ sampling

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``count`` points (inactive nested columns are NaN)."""
        which = rng.choice(len(self.centers), size=count, p=np.exp(self.log_weights))
        centers, widths = self.centers[which], self.bandwidth[which]
        out = np.empty((count, self.encoding.dim))
        for i in self.encoding.bounded:
            out[:, i] = _truncated_normal(rng, centers[:, i], widths[:, i])
        for i in self.encoding.normal:
            c = np.nan_to_num(centers[:, i], nan=0.0)
            s = np.where(np.isnan(centers[:, i]), 1.0, widths[:, i])
            out[:, i] = rng.normal(c, s)
        for i, table in self._categorical_tables.items():
            probs = np.exp(table[which])
            cumulative = np.cumsum(probs, axis=1)
            draws = rng.random(count)[:, None] * cumulative[:, -1:]
            out[:, i] = np.minimum((draws > cumulative).sum(axis=1), table.shape[1] - 1)
        return self.encoding.snap(self.encoding.mask_inactive(out))

    # ------------------------------------------------------------ density

    def log_pdf(self, points: np.ndarray) -> np.ndarray:
        """Log-density of each point, over the columns active in that point."""
        per_component = np.tile(self.log_weights, (len(points), 1))  # (points, components)
        for i in self.encoding.bounded:
            per_component += _column_log_pdf(points[:, i], self.centers[:, i], self.bandwidth[:, i], True)
        for i in self.encoding.normal:
            per_component += _column_log_pdf(points[:, i], self.centers[:, i], self.bandwidth[:, i], False)
        for i, table in self._categorical_tables.items():
            x = points[:, i]
            active = ~np.isnan(x)
            if active.any():
                per_component[active] += table[:, x[active].astype(int)].T
        return logsumexp(per_component, axis=1)


def _truncated_normal(rng: np.random.Generator, centers: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Draws from N(c, w) truncated to [0, 1] by inverting the CDF; NaN centres draw from U(0, 1)."""
    prior = np.isnan(centers)
    c = np.where(prior, 0.5, centers)
    w = np.where(prior, 1e6, widths)  # a very wide kernel on [0, 1] is uniform
    low, high = ndtr(-c / w), ndtr((1.0 - c) / w)
    u = low + rng.random(len(c)) * (high - low)
    x = c + w * ndtri(np.clip(u, 1e-300, 1 - 1e-16))
    x = np.where(prior, rng.random(len(c)), x)
    return np.clip(x, 0.0, 1.0)


def _column_log_pdf(x: np.ndarray, centers: np.ndarray, widths: np.ndarray, bounded: bool) -> np.ndarray:
    """(points, components) log-kernel values of one column; 0 where the point lacks the column."""
    active = ~np.isnan(x)
    out = np.zeros((len(x), len(centers)))
    if not active.any():
        return out
    prior = np.isnan(centers)
    c = np.where(prior, 0.0 if not bounded else 0.5, centers)
    w = np.where(prior, 1.0, widths)
    z = (x[active, None] - c[None, :]) / w[None, :]
    log_k = -0.5 * z * z - np.log(w)[None, :] - _LOG_SQRT_2PI
    if bounded:
        mass = _log_mass(c, w)
        log_k = np.where(prior[None, :], 0.0, log_k - mass[None, :])  # the prior is U(0, 1)
    out[active] = log_k
    return out


def _log_mass(c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log P(0 <= N(c, w) <= 1), computed stably in the tails."""
    a, b = -c / w, (1.0 - c) / w
    log_b, log_a = log_ndtr(b), log_ndtr(a)
    return log_b + np.log1p(-np.exp(np.minimum(log_a - log_b, -1e-12)))
