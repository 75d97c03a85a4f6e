"""NNI's ``GP`` tuner (alias ``GPTuner``): Bayesian optimisation with a Gaussian process.

As in NNI: ``cold_start_num`` random trials first; then a GP (Matern kernel of smoothness ``nu``,
noise ``alpha``) is fitted to the finished trials and the point maximising the utility (``ei``,
``ucb`` with ``kappa``, ``poi`` with ``xi``) is suggested. The utility is maximised over
``selection_num_warm_up`` random points, then refined by a local search from the best
``selection_num_starting_points`` of them. Search-space types are NNI's for GP: ``choice`` (of
numbers), ``randint``, ``uniform``, ``quniform``, ``loguniform``, ``qloguniform``.

Differences from NNI, on purpose: the model works in the unit cube with log-scaled log types (NNI
fits raw values), has one length scale per parameter, and treats trials in flight as a "kriging
believer": each pending point is added with the GP's own prediction as its value (hyperparameters
fitted on real results only), which removes the uncertainty there, so parallel suggestions differ
instead of repeating the same maximum. (A worst-value constant liar was tried first: with 8 in
flight on Branin its regret was 0.30 against 0.00001 for the believer; see
benchmarks/README_tuners.md.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import BaseTuner, Internal, Observation
from .encoding import Encoding
from .errors import refuse_unsupported_space
from .gaussian_process import GaussianProcess

__all__ = ["GpSettings", "GpTuner"]


#: Random points scored per block when maximising the utility (bounds memory: block x trials).
_BLOCK = 8192
_LOCAL_ITERATIONS = 60
#: Finished trials the GP is fitted on, at most (see GpTuner._model_history).
MODEL_POINTS = 300


@dataclass(frozen=True)
class GpSettings:
    """NNI's GPTuner classArgs (besides optimize_mode) with NNI's defaults."""

    utility: str = "ei"
    kappa: float = 5.0
    xi: float = 0.0
    nu: float = 2.5
    alpha: float = 1e-6
    cold_start_num: int = 10
    selection_num_warm_up: int = 100_000
    selection_num_starting_points: int = 250


class GpTuner(BaseTuner):
    """See the module docstring."""

    name = "GP"

    def __init__(self, *, seed: int | None = None, minimize: bool = False,
                 settings: GpSettings | None = None) -> None:
        super().__init__(seed=seed, minimize=minimize)
        self.settings = settings or GpSettings()
        self.encoding = Encoding([])

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        refuse_unsupported_space(self.name, search_space)
        super().update_search_space(search_space)

    def _on_search_space(self) -> None:
        self.encoding = Encoding(self.specs)
        # A choice of numbers is an ordered axis: each option's place among the sorted values.
        self._ranks = {i: np.argsort(np.argsort([float(v) for v in c.spec.values]))
                       for i, c in enumerate(self.encoding.columns) if c.kind == "categorical"}

    # ------------------------------------------------------------ unit cube <-> internal values

    def _to_cube(self, internal: Internal) -> np.ndarray:
        u = self.encoding.encode(internal)
        for i, ranks in self._ranks.items():
            u[i] = (ranks[int(u[i])] + 0.5) / len(ranks)
        return u

    def _from_cube(self, u: np.ndarray) -> Internal:
        v = np.clip(u, 0.0, 1.0)
        point = self.encoding.snap(v[None, :].copy())[0]
        for i, ranks in self._ranks.items():
            rank = min(int(v[i] * len(ranks)), len(ranks) - 1)
            point[i] = float(np.flatnonzero(ranks == rank)[0])
        return self.encoding.decode(point)

    # ------------------------------------------------------------ suggesting

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        if len(self.history) < max(self.settings.cold_start_num, 2):
            return self._sample_prior(rng)
        gp = self._model()
        candidates = self._maximise(gp, rng)
        for u in candidates:
            internal = self._from_cube(u)
            if not self._is_seen(internal):
                return internal
        return self._sample_prior(rng)  # every candidate repeats a trial: deduplication takes over

    def _model(self) -> GaussianProcess:
        history = self._model_history()
        x = np.array([self._to_cube(o.internal) for o in history])
        y = np.array([o.loss for o in history])
        gp = GaussianProcess(self.settings.nu, self.settings.alpha).fit(x, y)
        if self.pending:  # kriging believer: a trial in flight is believed to score what the GP predicts
            pending = np.array([self._to_cube(p) for p in self.pending.values()])
            gp = gp.condition(pending, gp.predict(pending)[0])
        self._best = float(y.min())
        return gp

    def _model_history(self) -> list[Observation]:
        """At most MODEL_POINTS trials: the best ones and the latest others.

        A GP's fit costs the cube of its points; without a cap a long experiment's every suggestion
        would take minutes (NNI's GP has no cap and slows down the same way)."""
        if len(self.history) <= MODEL_POINTS:
            return self.history
        ranked = sorted(range(len(self.history)), key=lambda i: self.history[i].loss)
        best = set(ranked[: MODEL_POINTS * 2 // 3])
        others = [i for i in range(len(self.history) - 1, -1, -1) if i not in best]
        latest = others[: MODEL_POINTS - len(best)]
        return [self.history[i] for i in sorted(best | set(latest))]

    def _utility(self, gp: GaussianProcess, u: np.ndarray) -> np.ndarray:
        """Higher is better; losses are minimised (NNI maximises the negated loss: the same).

        Expected improvement is ranked by its logarithm: far from the best trials it underflows
        to 0, and a warm-up of mostly zeros would pick its starting points at random."""
        from scipy.special import log_ndtr  # lazily: `tunebus create` builds tuners to check them

        mean, std = gp.predict(u)
        s = self.settings
        if s.utility == "ucb":
            return -mean + s.kappa * std
        z = (self._best - mean - s.xi) / std
        if s.utility == "poi":
            return np.exp(log_ndtr(z))
        return np.log(std) + _log_h(z)

    def _maximise(self, gp: GaussianProcess, rng: np.random.Generator) -> np.ndarray:
        """Candidate points, best utility first: random warm-up, then local refinement of the best."""
        s = self.settings
        dim = self.encoding.dim
        points: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for start in range(0, s.selection_num_warm_up, _BLOCK):
            block = rng.random((min(_BLOCK, s.selection_num_warm_up - start), dim))
            points.append(block)
            scores.append(self._utility(gp, block))
        warm = np.vstack(points)
        warm_scores = np.concatenate(scores)
        top = np.argsort(-warm_scores, kind="stable")[: s.selection_num_starting_points]
        refined, refined_scores = self._refine(gp, warm[top], warm_scores[top])
        every = np.vstack([refined, warm[top]])
        order = np.argsort(-np.concatenate([refined_scores, warm_scores[top]]), kind="stable")
        return every[order]

    def _refine(self, gp: GaussianProcess, x: np.ndarray, fx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """L-BFGS-B from every starting point at once (as NNI runs it from each), on the utility's
        analytic gradient: the starts are independent, so their summed utility is maximised as one
        problem and each point climbs its own hill. A point keeps its start if it did not improve."""
        from scipy.optimize import minimize  # lazily: `tunebus create` builds tuners to check them

        if not len(x):
            return x, fx
        shape = x.shape

        def negative_sum(flat: np.ndarray) -> tuple[float, np.ndarray]:
            value, gradient = self._utility_with_gradient(gp, flat.reshape(shape))
            return -float(value.sum()), -gradient.ravel()

        found = minimize(negative_sum, x.ravel(), jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * x.size,
                         options={"maxiter": _LOCAL_ITERATIONS})
        refined = np.clip(found.x.reshape(shape), 0.0, 1.0)
        refined_fx = self._utility(gp, refined)
        better = refined_fx > fx
        x, fx = x.copy(), fx.copy()
        x[better], fx[better] = refined[better], refined_fx[better]
        return x, fx

    def _utility_with_gradient(self, gp: GaussianProcess, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The utility (as :meth:`_utility`) and its gradient in the unit cube."""
        from scipy.special import ndtr

        mean, std, dmean, dstd = gp.predict_with_gradient(u)
        s = self.settings
        if s.utility == "ucb":
            return -mean + s.kappa * std, -dmean + s.kappa * dstd
        z = (self._best - mean - s.xi) / std
        dz = (-dmean - z[:, None] * dstd) / std[:, None]
        if s.utility == "poi":
            density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            return ndtr(z), density[:, None] * dz
        # log EI = log std + log h(z), h(z) = z Phi(z) + phi(z), h'(z) = Phi(z)
        return np.log(std) + _log_h(z), dstd / std[:, None] + _phi_over_h(z)[:, None] * dz


_ASYMPTOTIC_Z = -8.0  # below it h(z) = z Phi(z) + phi(z) cancels: its asymptotic series is used


def _log_h(z: np.ndarray) -> np.ndarray:
    """log(z Phi(z) + phi(z)), the log of expected improvement over the standard deviation, for any z."""
    from scipy.special import ndtr

    direct = np.maximum(z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi), 1e-300)
    far = np.minimum(z, _ASYMPTOTIC_Z)  # h(z) ~ phi(z) / z**2 * (1 - 3 / z**2 + 15 / z**4 - 105 / z**6)
    series = (-0.5 * far * far - 0.5 * math.log(2 * math.pi) - 2 * np.log(-far)
              + np.log1p(-3 / far**2 + 15 / far**4 - 105 / far**6))
    return np.where(z > _ASYMPTOTIC_Z, np.log(direct), series)


def _phi_over_h(z: np.ndarray) -> np.ndarray:
    """Phi(z) / h(z): the derivative of log h (for the gradient of log EI)."""
    from scipy.special import log_ndtr

    return np.exp(log_ndtr(z) - _log_h(z))
