"""``Curvefitting``: predict a trial's final result from its learning curve and stop hopeless ones.

NNI's assessor (Domhan et al., 2015) fits a weighted ensemble of eleven curve families with MCMC.
This one keeps the idea but is simpler and deterministic: it least-squares fits a handful of
saturating curve families (``scipy.optimize.curve_fit``), weights each by its Akaike weight
(goodness of fit, penalised by parameter count), drops fits that predict nonsense (non-finite, or
far outside the observed range), and averages the predictions at ``epoch_num``.

Decision, as in NNI: from ``start_step`` results on, and at most every ``gap`` results, a trial is
stopped when its predicted final value is worse than ``threshold`` times the best final value of
the trials completed so far (for maximizing; for minimizing, worse than best + (1 - threshold) *
|best|). With no completed trial, or no usable fit, the answer is Good.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .result import AssessResult, finite, scalar_history

__all__ = ["CurvefittingAssessor", "predict_final"]

Curve = Callable[..., np.ndarray]


def _pow3(x: np.ndarray, c: float, a: float, alpha: float) -> np.ndarray:
    return c - a * np.power(x, -alpha)


def _log_linear(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.log(x) + b


def _exp3(x: np.ndarray, c: float, a: float, b: float) -> np.ndarray:
    return c - np.exp(-a * x + b)


def _mmf(x: np.ndarray, alpha: float, beta: float, kappa: float, delta: float) -> np.ndarray:
    return alpha - (alpha - beta) / (1.0 + np.power(np.abs(kappa * x), delta))


def _ilog2(x: np.ndarray, c: float, a: float) -> np.ndarray:
    return c - a / np.log(x + 1.0)


def _initial_guesses(y: np.ndarray) -> dict[str, tuple[Curve, list[float]]]:
    last, first = float(y[-1]), float(y[0])
    span = last - first or 1e-3
    return {
        "pow3": (_pow3, [last, -span, 0.5]),
        "log_linear": (_log_linear, [span / max(math.log(len(y)), 1e-3), first]),
        "exp3": (_exp3, [last, 0.5, math.log(abs(span) + 1e-9)]),
        "mmf": (_mmf, [last, first, 0.5, 1.0]),
        "ilog2": (_ilog2, [last, span]),
    }


def predict_final(history: list[float], epoch_num: int) -> float | None:
    """Predicted value at step ``epoch_num`` (1-based) of a curve seen at steps 1..len(history)."""
    y = np.asarray(history, dtype=float)
    if len(y) < 3 or not finite(history):
        return None
    x = np.arange(1, len(y) + 1, dtype=float)
    scale = float(np.ptp(y)) or max(abs(float(y[-1])), 1e-12)
    predictions, scores = [], []
    for function, guess in _initial_guesses(y).values():
        if len(guess) >= len(y):
            continue  # as many parameters as points: a perfect but meaningless fit
        fitted = _fit(function, x, y, guess)
        if fitted is None:
            continue
        residual = float(np.sum((function(x, *fitted) - y) ** 2))
        value = float(function(np.array([float(epoch_num)]), *fitted)[0])
        if not math.isfinite(value) or abs(value - float(y[-1])) > 10 * scale:
            continue  # an extrapolation that leaves the plausible range
        predictions.append(value)
        scores.append(_aic(residual, len(y), len(guess), scale))
    if not predictions:
        return None
    weights = np.exp(-0.5 * (np.array(scores) - min(scores)))
    return float(np.dot(weights, predictions) / weights.sum())


def _fit(function: Curve, x: np.ndarray, y: np.ndarray, guess: list[float]) -> np.ndarray | None:
    from scipy.optimize import (  # lazily: `tunebus create` builds tuners to check them
        OptimizeWarning,
        curve_fit,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            params, _ = curve_fit(function, x, y, p0=guess, maxfev=2000)
        except (RuntimeError, ValueError, TypeError):
            return None
    return params if np.all(np.isfinite(params)) else None


def _aic(residual: float, points: int, parameters: int, scale: float) -> float:
    """Akaike's criterion for a least-squares fit; a floor keeps exact fits from dominating."""
    mse = max(residual / points, (1e-6 * scale) ** 2)
    return points * math.log(mse) + 2 * parameters


class CurvefittingAssessor:
    """See the module docstring."""

    name = "Curvefitting"

    def __init__(
        self,
        epoch_num: int = 20,
        start_step: int = 6,
        threshold: float = 0.95,
        gap: int = 1,
        maximize: bool = True,
    ) -> None:
        self.epoch_num = epoch_num
        self.start_step = start_step
        self.threshold = threshold
        self.gap = gap
        self.maximize = maximize
        self.best: float | None = None
        self._running: dict[str, list[float]] = {}
        self._last_judged: dict[str, int] = {}

    @classmethod
    def from_class_args(cls, args: dict[str, Any]) -> CurvefittingAssessor:
        """Build from NNI's classArgs (epoch_num, start_step, threshold, gap, optimize_mode), checked."""
        return cls(args["epoch_num"], args["start_step"], args["threshold"], args["gap"],
                   args["optimize_mode"] == "maximize")

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        """Good or Bad for a running trial, given all its intermediate results so far."""
        history = scalar_history(trial_history)
        self._running[trial_job_id] = history
        step = len(history)
        if self.best is None or step < self.start_step:
            return AssessResult.Good
        last = self._last_judged.get(trial_job_id)
        if last is not None and step - last < self.gap:
            return AssessResult.Good
        self._last_judged[trial_job_id] = step
        predicted = predict_final(history, self.epoch_num)
        if predicted is None:
            return AssessResult.Good
        return AssessResult.Good if self._promising(predicted) else AssessResult.Bad

    def _promising(self, predicted: float) -> bool:
        assert self.best is not None
        margin = (1.0 - self.threshold) * abs(self.best)
        return predicted > self.best - margin if self.maximize else predicted < self.best + margin

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        """A successful trial's last result may become the best completed performance."""
        history = self._running.pop(trial_job_id, None)
        self._last_judged.pop(trial_job_id, None)
        if not success or not history:
            return
        final = history[-1]
        if self.best is None:
            self.best = final
        else:
            self.best = max(self.best, final) if self.maximize else min(self.best, final)
