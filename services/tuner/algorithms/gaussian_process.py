"""A small Gaussian-process regressor for the GP tuner: Matern kernel, one length scale per
dimension (ARD), signal variance, targets standardised, and the kernel's hyperparameters fitted by
maximising the log marginal likelihood (analytic gradients, L-BFGS-B).

Inputs live in the unit cube. Everything is deterministic: the fit starts from fixed points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.algorithms import MATERN_NUS

__all__ = ["GaussianProcess"]

#: Smoothness values with closed forms (scikit-learn's Matern takes any nu; these are the ones used).

_LOG_LENGTH = (math.log(0.01), math.log(20.0))
_LOG_SIGNAL = (math.log(0.05), math.log(20.0))
_JITTERS = (0.0, 1e-8, 1e-6, 1e-4, 1e-2)


def _matern(nu: float, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k(r) / signal and g(r) with dk/dlog(l_j) = signal * g(r) * (d_j / l_j) ** 2."""
    if nu == 0.5:
        e = np.exp(-r)
        return e, np.where(r > 0, e / np.maximum(r, 1e-12), 0.0)
    if nu == 1.5:
        s = math.sqrt(3.0) * r
        e = np.exp(-s)
        return (1.0 + s) * e, 3.0 * e
    s = math.sqrt(5.0) * r
    e = np.exp(-s)
    return (1.0 + s + s * s / 3.0) * e, (5.0 / 3.0) * (1.0 + s) * e


@dataclass
class _Fit:
    log_lengths: np.ndarray
    log_signal: float
    chol: np.ndarray
    alpha: np.ndarray  # K^-1 y (standardised targets)
    jitter: float
    chol_inverse: np.ndarray  # L^-1: prediction by one matrix product instead of a triangular solve


class GaussianProcess:
    """Fit on (x, y), then :meth:`predict` mean and standard deviation in the units of y."""

    def __init__(self, nu: float = 2.5, noise: float = 1e-6) -> None:
        if nu not in MATERN_NUS:
            raise ValueError(f"nu must be one of {MATERN_NUS}, got {nu}")
        self.nu = nu
        self.noise = noise
        self._x = np.empty((0, 0))
        self._y = np.empty(0)
        self._y_mean = 0.0
        self._y_std = 1.0
        self._fit: _Fit | None = None

    # ------------------------------------------------------------ fitting

    def fit(self, x: np.ndarray, y: np.ndarray) -> GaussianProcess:
        """Standardise y and choose the hyperparameters that best explain the data."""
        from scipy.optimize import minimize  # lazily: `tunebus create` builds tuners to check them

        self._x = np.asarray(x, dtype=float)
        y = self._y = np.asarray(y, dtype=float)
        self._y_mean = float(y.mean())
        self._y_std = float(y.std()) or 1.0
        z = (y - self._y_mean) / self._y_std
        dim = self._x.shape[1]
        starts = [np.append(np.full(dim, math.log(0.5)), 0.0), np.append(np.full(dim, math.log(0.1)), 0.0)]
        bounds = [_LOG_LENGTH] * dim + [_LOG_SIGNAL]
        best: tuple[float, np.ndarray] | None = None
        for start in starts:
            result = minimize(self._negative_lml, start, args=(z,), jac=True, method="L-BFGS-B",
                              bounds=bounds, options={"maxiter": 100})
            value = float(result.fun)
            if math.isfinite(value) and (best is None or value < best[0]):
                best = (value, result.x)
        theta = best[1] if best is not None else starts[1]
        self._fit = self._factor(theta, z)
        return self

    def condition(self, x_more: np.ndarray, y_more: np.ndarray) -> GaussianProcess:
        """The same hyperparameters, with extra points (pending trials' believed values) added."""
        if self._fit is None or not len(x_more):
            return self
        other = GaussianProcess(self.nu, self.noise)
        other._x = np.vstack([self._x, x_more])
        other._y = np.concatenate([self._y, y_more])
        other._y_mean, other._y_std = self._y_mean, self._y_std
        z = (other._y - self._y_mean) / self._y_std
        theta = np.append(self._fit.log_lengths, self._fit.log_signal)
        other._fit = other._factor(theta, z)
        return other

    def _kernel(self, a: np.ndarray, b: np.ndarray, log_lengths: np.ndarray,
                log_signal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lengths = np.exp(log_lengths)
        scaled = (a[:, None, :] - b[None, :, :]) / lengths
        r = np.sqrt(np.sum(scaled * scaled, axis=-1))
        shape, slope = _matern(self.nu, r)
        return math.exp(log_signal) * shape, slope, scaled

    def _factor(self, theta: np.ndarray, z: np.ndarray) -> _Fit:
        from scipy.linalg import (  # lazily: `tunebus create` builds tuners to check them
            cho_solve,
            cholesky,
            solve_triangular,
        )

        k = self._kernel(self._x, self._x, theta[:-1], float(theta[-1]))[0]
        for jitter in _JITTERS:
            try:
                chol = cholesky(k + (self.noise + jitter) * np.eye(len(k)), lower=True)
            except np.linalg.LinAlgError:
                continue
            inverse = solve_triangular(chol, np.eye(len(chol)), lower=True)
            alpha = cho_solve((chol, True), z)
            return _Fit(theta[:-1].copy(), float(theta[-1]), chol, alpha, jitter, inverse)
        raise np.linalg.LinAlgError("the kernel matrix is not positive definite even with jitter")

    def _negative_lml(self, theta: np.ndarray, z: np.ndarray) -> tuple[float, np.ndarray]:
        """Minus the log marginal likelihood and its gradient in (log lengths, log signal)."""
        from scipy.linalg import cho_solve, cholesky  # lazily: `tunebus create` builds tuners to check them

        signal = math.exp(float(theta[-1]))
        k, slope, scaled = self._kernel(self._x, self._x, theta[:-1], float(theta[-1]))
        try:
            chol = cholesky(k + (self.noise + 1e-8) * np.eye(len(k)), lower=True)
        except np.linalg.LinAlgError:
            return 1e25, np.zeros_like(theta)
        alpha = cho_solve((chol, True), z)
        lml = -0.5 * z @ alpha - np.log(np.diag(chol)).sum() - 0.5 * len(z) * math.log(2 * math.pi)
        inner = np.outer(alpha, alpha) - cho_solve((chol, True), np.eye(len(z)))
        grad = np.empty_like(theta)
        weighted = inner * signal * slope
        for j in range(len(theta) - 1):
            grad[j] = 0.5 * np.sum(weighted * scaled[:, :, j] ** 2)
        grad[-1] = 0.5 * np.sum(inner * k)
        return -float(lml), -grad

    def leave_one_out(self) -> tuple[np.ndarray, np.ndarray]:
        """Each fitted point's mean and standard deviation as predicted from all the others (the
        closed form, same hyperparameters), in the units of y."""
        if self._fit is None:
            raise RuntimeError("fit the Gaussian process first")
        inverse_diagonal = np.sum(self._fit.chol_inverse ** 2, axis=0)  # diag(K^-1), K^-1 = L^-T L^-1
        z = (self._y - self._y_mean) / self._y_std
        mean = z - self._fit.alpha / inverse_diagonal
        return mean * self._y_std + self._y_mean, np.sqrt(1.0 / inverse_diagonal) * self._y_std

    # ------------------------------------------------------------ predicting

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at the rows of ``x``, in the units of y."""
        if self._fit is None:
            raise RuntimeError("fit the Gaussian process first")
        fit = self._fit
        lengths = np.exp(fit.log_lengths)
        a, b = np.asarray(x, dtype=float) / lengths, self._x / lengths
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        k_star = math.exp(fit.log_signal) * _matern(self.nu, np.sqrt(np.maximum(squared, 0.0)))[0]
        mean = k_star @ fit.alpha
        v = k_star @ fit.chol_inverse.T
        variance = np.maximum(math.exp(fit.log_signal) - np.sum(v * v, axis=1), 1e-12)
        return mean * self._y_std + self._y_mean, np.sqrt(variance) * self._y_std

    def predict_with_gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean and standard deviation at the rows of ``x`` (n x d), and their gradients in x (n x d)."""
        if self._fit is None:
            raise RuntimeError("fit the Gaussian process first")
        fit = self._fit
        lengths = np.exp(fit.log_lengths)
        signal = math.exp(fit.log_signal)
        x = np.asarray(x, dtype=float)
        differences = x[:, None, :] - self._x[None, :, :]  # n x m x d
        r = np.sqrt(np.sum((differences / lengths) ** 2, axis=-1))
        shape, slope = _matern(self.nu, r)
        k_star = signal * shape  # n x m
        # dk/dx_j = -signal * g(r) * d_j / l_j**2 (g as in _matern)
        dk = -signal * slope[:, :, None] * differences / lengths**2  # n x m x d
        mean = k_star @ fit.alpha
        dmean = np.einsum("nmd,m->nd", dk, fit.alpha)
        v = k_star @ fit.chol_inverse.T  # n x m: L^-1 k*
        variance = np.maximum(signal - np.sum(v * v, axis=1), 1e-12)
        std = np.sqrt(variance)
        # d var / dx = -2 v . (L^-1 dk*/dx)
        dv = np.matmul(fit.chol_inverse, dk)  # n x m x d
        dstd = -np.einsum("nk,nkd->nd", v, dv) / std[:, None]
        return (mean * self._y_std + self._y_mean, std * self._y_std, dmean * self._y_std, dstd * self._y_std)
