"""NNI's ``Metis`` tuner (alias ``MetisTuner``): a GP for the optimum, candidates weighed by information gain.

Details: :class:`MetisTuner`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Internal, Observation
from .gaussian_process import GaussianProcess
from .gp import GpSettings, GpTuner

__all__ = ["MetisSettings", "MetisTuner"]

_EXPLOITATION_FROM = 12  # NNI's threshold_samplessize_exploitation
_RESAMPLING_FROM = 50  # NNI's threshold_samplessize_resampling
_MAX_RESAMPLING = 3  # NNI's max_resampling_per_x
_OUTLIER_Z = 2.33  # NNI: the z-score of a 98% confidence level
_GAIN_Z = 1.96
_GOOD_FRACTION = 0.34  # NNI's percentage_goodbatch
_REFINED = 8  # starting points refined by local search
# A new-point candidate whose predicted standard deviation is below this share of the results'
# spread is one the model already knows (next to a trial): its result would teach nothing.
_KNOWN_SIGMA = 1e-3


@dataclass(frozen=True)
class MetisSettings:
    """NNI's MetisTuner classArgs (besides optimize_mode) with NNI's defaults."""

    no_resampling: bool = True
    no_candidates: bool = False
    selection_num_starting_points: int = 600
    cold_start_num: int = 10
    exploration_probability: float = 0.9


@dataclass
class _Candidate:
    u: np.ndarray  # in the unit cube
    mu: float
    sigma: float


class MetisTuner(GpTuner):
    """NNI's ``Metis`` tuner: a GP for the optimum, candidates weighed by information gain.

    As NNI's MetisTuner does for each suggestion, after ``cold_start_num`` random trials:

    1. A Gaussian process (Matern, nu 1.5) on the results gives the current optimum: the point of
       lowest predicted loss, searched from ``selection_num_starting_points`` random starting points.
    2. Unless ``no_candidates``, candidates for the next trial are gathered: *exploration*, the point
       where the GP is least certain; *exploitation* (from 12 results on), the point most likely
       under a Gaussian mixture of the best third of the trials against one of the rest; and, unless
       ``no_resampling`` (from 50 distinct results on), *re-sampling*: trials whose result lies more
       than 2.33 standard deviations from what the others predict (outliers, run again at most 3 times).
    3. Each candidate's information gain: the GP is conditioned on it scoring mu +- 1.96 sigma, and
       the candidate that would lower the predicted optimum the most wins.
    4. With probability ``exploration_probability``, or when the current optimum was suggested
       before, the winning candidate is suggested (a random point if none gains); else the optimum.

    Search-space types are NNI's for Metis: ``choice`` of numbers, ``randint``, ``uniform`` and
    ``quniform``; others are refused.

    Differences from NNI, on purpose: the model is this package's own GP (the GP tuner's: unit cube,
    one length scale per parameter, fitted once per suggestion, where NNI fits scikit-learn's with 250
    restarts and refits it for every candidate and every left-out trial); "least certain" is the
    largest predicted standard deviation relative to the predicted mean's distance from the best
    result (NNI divides by the predicted mean itself, which changes sign with the metric); a
    candidate the model already knows (its predicted standard deviation under 0.1% of the results'
    spread: beside a trial) is dropped like one run before, where NNI suggests a candidate for any
    gain however small; the mixtures are Gaussians centred on the trials (NNI fits scikit-learn's
    BayesianGaussianMixture with one component fewer than trials); local searches start from the best
    of the starting points (NNI runs L-BFGS from every one). Trials in flight are handled as in the GP
    tuner (kriging believer), and every draw comes from the experiment's seed.
    """

    name = "Metis"

    def __init__(self, *, seed: int | None = None, minimize: bool = False,
                 settings: MetisSettings | None = None) -> None:
        self.metis = settings or MetisSettings()
        super().__init__(seed=seed, minimize=minimize,
                         settings=GpSettings(nu=1.5, cold_start_num=self.metis.cold_start_num))
        self._resample_next: str | None = None  # key of an outlier chosen to run again

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        super().update_search_space(search_space)  # GP's, with Metis's rules (the registry's)

    # ------------------------------------------------------------ suggesting

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        self._resample_next = None
        if len(self.history) < max(self.metis.cold_start_num, 2):
            return self._sample_prior(rng)
        gp = self._model()
        starts = rng.random((self.metis.selection_num_starting_points, self.encoding.dim))
        optimum, optimum_mu = self._lowest(lambda u: gp.predict(u)[0], starts)
        chosen: _Candidate | None = None
        if not self.metis.no_candidates:
            chosen = self._most_informative(gp, self._candidates(gp, starts, rng), optimum_mu, starts)
        suggestion = self._from_cube(optimum)
        if self._is_seen(suggestion) or rng.random() <= self.metis.exploration_probability:
            if chosen is None:
                return self._sample_prior(rng)
            suggestion = self._from_cube(chosen.u)
            if self._is_seen(suggestion):
                self._resample_next = self._key(suggestion)  # an outlier, run again on purpose
        return suggestion

    def _deduplicate(self, internal: Internal, rng: np.random.Generator) -> Internal:
        if self._resample_next is not None and self._key(internal) == self._resample_next:
            return internal  # re-sampling repeats a trial by design
        return super()._deduplicate(internal, rng)

    def _candidates(self, gp: GaussianProcess, starts: np.ndarray,
                    rng: np.random.Generator) -> list[_Candidate]:
        out: list[_Candidate] = []
        losses = np.array([loss for _, loss in self._aggregated()])
        floor = float(losses.min())

        def confidence(u: np.ndarray) -> np.ndarray:  # NNI's -(2 * 1.96 * sigma) / mu, from the best
            mean, std = gp.predict(u)
            return -std / np.maximum(mean - floor, 1e-9 * (abs(floor) + 1.0))

        explore, _ = self._lowest(confidence, starts)
        out.append(self._candidate(gp, explore))
        if len(self.history) >= _EXPLOITATION_FROM:
            out.append(self._candidate(gp, self._exploit(starts, rng)))
        known = _KNOWN_SIGMA * float(losses.std())
        out = [c for c in out if self._times_run(c.u) == 0 and c.sigma > known]
        if not self.metis.no_resampling and len(losses) >= _RESAMPLING_FROM:
            out += self._outliers()
        return out

    def _most_informative(self, gp: GaussianProcess, candidates: list[_Candidate], optimum_mu: float,
                          starts: np.ndarray) -> _Candidate | None:
        """The candidate whose result would lower the predicted optimum the most (None: none would)."""
        best: tuple[float, _Candidate] | None = None
        few = starts[: max(1, len(starts) // 4)]  # the what-if searches: a quarter of the starts
        for candidate in candidates:
            outcomes = (candidate.mu + _GAIN_Z * candidate.sigma, candidate.mu - _GAIN_Z * candidate.sigma)
            gain = min(self._optimum_if(gp, candidate, y, few) for y in outcomes) - optimum_mu
            if gain < 0 and (best is None or gain < best[0]):
                best = (gain, candidate)
        return None if best is None else best[1]

    def _optimum_if(self, gp: GaussianProcess, candidate: _Candidate, loss: float,
                    starts: np.ndarray) -> float:
        """The lowest predicted loss if the candidate scored ``loss``."""
        what_if = gp.condition(candidate.u[None, :], np.array([loss]))
        return self._lowest(lambda u: what_if.predict(u)[0], starts)[1]

    # ------------------------------------------------------------ the three kinds of candidate

    def _exploit(self, starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The point most likely under the good trials' mixture relative to the bad ones'."""
        data = self._aggregated()
        ranked = sorted(data, key=lambda item: item[1])
        size = max(1, int(len(ranked) * _GOOD_FRACTION))
        good = np.array([u for u, _ in ranked[:size]])
        bad = np.array([u for u, _ in ranked[size:]])
        if self._all_continuous():  # NNI: start from points drawn from the good mixture
            starts = _sample_mixture(good, len(starts), rng)

        def ratio(u: np.ndarray) -> np.ndarray:
            return _log_mixture(bad, u) - _log_mixture(good, u)

        return self._lowest(ratio, starts)[0]

    def _outliers(self) -> list[_Candidate]:
        """Trials whose result the others do not predict (leave-one-out), not yet run 3 times."""
        data = self._aggregated()
        x = np.array([u for u, _ in data])
        y = np.array([loss for _, loss in data])
        gp = GaussianProcess(self.settings.nu, self.settings.alpha).fit(x, y)
        mean, std = gp.leave_one_out()
        return [_Candidate(x[i], float(mean[i]), float(std[i])) for i in range(len(x))
                if abs(y[i] - mean[i]) > _OUTLIER_Z * std[i] and self._times_run(x[i]) < _MAX_RESAMPLING]

    # ------------------------------------------------------------ helpers

    def _model_history(self) -> list[Observation]:
        """As the GP tuner's, with a re-sampled point's results merged into their median (as NNI)."""
        merged: dict[str, list[Observation]] = {}
        for observation in super()._model_history():
            merged.setdefault(self._key(observation.internal), []).append(observation)
        return [Observation(group[0].internal, float(np.median([o.loss for o in group])), group[0].parameters)
                for group in merged.values()]

    def _aggregated(self) -> list[tuple[np.ndarray, float]]:
        return [(self._to_cube(o.internal), o.loss) for o in self._model_history()]

    def _times_run(self, u: np.ndarray) -> int:
        key = self._key(self._from_cube(u))
        return sum(1 for o in self.history if self._key(o.internal) == key)

    def _candidate(self, gp: GaussianProcess, u: np.ndarray) -> _Candidate:
        # Snapped to what a trial would get, so "run before" and the what-if are about that point.
        u = self._to_cube(self._from_cube(u))
        mean, std = gp.predict(u[None, :])
        return _Candidate(u, float(mean[0]), float(std[0]))

    def _all_continuous(self) -> bool:
        return all(spec.type == "uniform" for spec in self.specs)

    def _lowest(self, score: Callable[[np.ndarray], np.ndarray],
                starts: np.ndarray) -> tuple[np.ndarray, float]:
        """The lowest ``score`` found: over the starting points, then a local search from the best."""
        values = score(starts)
        top = np.argsort(values, kind="stable")[:_REFINED]
        refined, refined_values = _compass_search(lambda u: -score(u), starts[top], -values[top])
        best = int(np.argmax(refined_values))
        return refined[best], float(-refined_values[best])


def _compass_search(score: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                    fx: np.ndarray, rounds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Batched: each point tries a step along +-each axis of the cube, halving the step each round."""
    x, fx = x.copy(), fx.copy()
    step = 0.05
    for _ in range(rounds):
        for axis in range(x.shape[1]):
            for sign in (1.0, -1.0):
                trial = x.copy()
                trial[:, axis] = np.clip(trial[:, axis] + sign * step, 0.0, 1.0)
                f_trial = score(trial)
                better = f_trial > fx
                x[better], fx[better] = trial[better], f_trial[better]
        step *= 0.5
    return x, fx


def _bandwidth(points: np.ndarray) -> np.ndarray:
    """Scott's rule per dimension, at least 0.05 of the cube (a single trial still spreads)."""
    n, dim = points.shape
    spread = points.std(axis=0) if n > 1 else np.zeros(dim)
    return np.maximum(spread * n ** (-1.0 / (dim + 4)), 0.05)


def _log_mixture(centres: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Log density at the rows of ``u`` of equal-weight Gaussians centred on ``centres``."""
    if not len(centres):
        return np.zeros(len(u))
    h = _bandwidth(centres)
    z = (u[:, None, :] - centres[None, :, :]) / h
    log_each = -0.5 * np.sum(z * z, axis=-1) - np.sum(np.log(h)) - 0.5 * u.shape[1] * math.log(2 * math.pi)
    peak = log_each.max(axis=1, keepdims=True)
    return (peak + np.log(np.exp(log_each - peak).mean(axis=1, keepdims=True)))[:, 0]


def _sample_mixture(centres: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picks = centres[rng.integers(len(centres), size=count)]
    return np.clip(picks + rng.normal(size=picks.shape) * _bandwidth(centres), 0.0, 1.0)
