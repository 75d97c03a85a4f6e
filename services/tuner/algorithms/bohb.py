"""NNI's ``BOHB`` advisor: Hyperband's brackets with model-based first rounds (Falkner et al., 2018).

Details: :class:`BohbAdvisor`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.algorithms import BUDGET_KEY
from shared.search_space import build_parameters, parse_parameters

from .encoding import Encoding
from .errors import refuse_unsupported_space
from .hyperband import HyperbandAdvisor, _Job, _key
from .parzen import ParzenEstimator

__all__ = ["BohbAdvisor", "BohbSettings"]


@dataclass(frozen=True)
class BohbSettings:
    """NNI's BOHB classArgs for the model, with NNI's defaults (``None``: parameters + 1)."""

    min_points_in_model: int | None = None
    top_n_percent: int = 15
    num_samples: int = 64
    random_fraction: float = 1 / 3
    bandwidth_factor: float = 3.0
    min_bandwidth: float = 1e-3


class BohbAdvisor(HyperbandAdvisor):
    """NNI's ``BOHB`` advisor: Hyperband's brackets with model-based first rounds.

    Brackets as in :mod:`.hyperband`, with ``s_max = floor(log_eta(max_budget / min_budget))``, round
    budgets ``max_budget / eta**s * eta**i``, one bracket at a time (NNI's BOHB is serial). A new
    bracket's configurations are drawn, each with probability ``1 - random_fraction``, from a
    TPE-like model of every budget's results: at each budget the best ``top_n_percent`` (at least
    one) are "good" and the rest "bad", each result weighted by its budget over the largest budget
    run so far; the good and the bad results of all budgets each get a Parzen estimator whose
    kernel widths follow the normal reference rule (at least ``min_bandwidth``); ``num_samples``
    points are drawn from the good one with widths times ``bandwidth_factor``, and the one with
    the highest good/bad density ratio is taken. Until the good and the bad sets each hold more
    points than there are parameters (and all together ``min_points_in_model``), the configuration
    is random.

    Search-space types are NNI's for BOHB (those ConfigSpace takes): every flat type; a nested
    choice is refused. Differences from NNI, on purpose: the model learns each trial at the budget it
    ran with, ranked among its own budget's results and weighted by that budget (NNI files every
    result under the final result's sequence number, and BOHB's paper models the largest budget
    with enough results alone: a short run's value is biased, but its rank among short runs tells
    much early on; ``benchmarks/README_tuners.md`` has the comparison), categorical kernels use the
    TPE rule of :mod:`.parzen` rather than statsmodels' Aitchison-Aitken kernel, and after a restart
    a bracket's first round is taken back from the recorded trials (the model that drew it saw only
    the results known then).
    """

    name = "BOHB"

    def __init__(self, *, seed: int, minimize: bool, min_budget: int = 1, max_budget: int = 3,
                 eta: int = 3, settings: BohbSettings | None = None) -> None:
        if max_budget <= min_budget:  # the registry refuses such classArgs (a direct caller's defect)
            raise ValueError(f"max_budget ({max_budget}) must be larger than min_budget ({min_budget})")
        super().__init__(seed=seed, minimize=minimize, R=max_budget, eta=eta, exec_mode="serial")
        self.s_max = math.floor(math.log(max_budget / min_budget, eta) + 1e-6)
        self.settings = settings or BohbSettings()
        self.encoding = Encoding([])
        self._results: dict[int, list[tuple[np.ndarray, float]]] = defaultdict(list)

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        refuse_unsupported_space(self.name, search_space)
        super().update_search_space(search_space)
        self.encoding = Encoding(self.specs)
        self._results = defaultdict(list)

    # ------------------------------------------------------------ the model's data

    def _end(self, job: _Job, loss: float | None) -> None:
        if loss is not None:
            config = {k: v for k, v in job.parameters.items() if k != BUDGET_KEY}
            internal = parse_parameters(self.specs, config)
            self._results[int(job.parameters[BUDGET_KEY])].append((self.encoding.encode(internal), loss))
        super()._end(job, loss)

    # ------------------------------------------------------------ first rounds

    def _first_round(self, rng: np.random.Generator, count: int, budget: int) -> list[dict[str, Any]]:
        # Drawn in full even when rebuilding, so the generator is where it was for the rest.
        recorded = self._recorded_first_round(count, budget)
        configs: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index in range(count):
            config = self._model_config(rng, seen) if rng.random() >= self.settings.random_fraction else None
            config = config or self._draw(rng)
            if index < len(recorded):
                config = recorded[index]  # what was handed out (the same, unless results came in later)
            seen.add(_key(config))
            configs.append(config)
        return configs

    def _recorded_first_round(self, count: int, budget: int) -> list[dict[str, Any]]:
        """While rebuilding: the recorded trials at this budget not matched yet, in their order."""
        if not self._replaying:
            return []
        recorded = [self._recorded[key] for key, left in self._replaying.items()
                    if left and self._recorded[key].get(BUDGET_KEY) == budget]
        return [{k: v for k, v in p.items() if k != BUDGET_KEY} for p in recorded[:count]]

    def _model_config(self, rng: np.random.Generator, seen: set[str]) -> dict[str, Any] | None:
        """The best of ``num_samples`` draws from the good density, or None without a model."""
        model = self._model()
        if model is None:
            return None
        good, bad, sampler = model
        drawn = sampler.sample(self.settings.num_samples, rng)
        candidates = self.encoding.snap(self.encoding.mask_inactive(drawn))
        scores = good.log_pdf(candidates) - bad.log_pdf(candidates)
        for index in np.argsort(-scores, kind="stable"):
            config = self._config(candidates[index])
            if _key(config) not in seen:
                return config
        return None

    def _config(self, vector: np.ndarray) -> dict[str, Any]:
        return build_parameters(self.specs, self.encoding.decode(vector))

    def _model(self) -> tuple[ParzenEstimator, ParzenEstimator, ParzenEstimator] | None:
        """Good, bad and sampling densities from every budget's results (see the class)."""
        s = self.settings
        dim = self.encoding.dim
        if not self._results or sum(map(len, self._results.values())) < (s.min_points_in_model or 0):
            return None
        largest = max(self._results)
        good: list[np.ndarray] = []
        bad: list[np.ndarray] = []
        good_weights: list[float] = []
        bad_weights: list[float] = []
        for budget in sorted(self._results):
            results = self._results[budget]
            order = sorted(range(len(results)), key=lambda i: results[i][1])
            n_good = max(1, math.ceil(s.top_n_percent * len(results) / 100))
            weight = budget / largest
            for rank, index in enumerate(order):
                (good if rank < n_good else bad).append(results[index][0])
                (good_weights if rank < n_good else bad_weights).append(weight)
        if len(good) <= dim or len(bad) <= dim:
            return None
        good_points, bad_points = np.array(good), np.array(bad)
        width = self._bandwidth(good_points)
        return (self._density(good_points, good_weights, width, 1.0),
                self._density(bad_points, bad_weights, self._bandwidth(bad_points), 1.0),
                self._density(good_points, good_weights, width * s.bandwidth_factor, 0.0))

    def _bandwidth(self, points: np.ndarray) -> np.ndarray:
        """The normal reference rule, per column, floored at min_bandwidth."""
        n, dim = points.shape
        spread = np.nanstd(points, axis=0) if n > 1 else np.ones(dim)
        width = 1.06 * np.nan_to_num(spread, nan=1.0) * n ** (-1.0 / (dim + 4))
        return np.clip(width, self.settings.min_bandwidth, 1.0)

    def _density(self, points: np.ndarray, weights: list[float], width: np.ndarray,
                 prior_weight: float) -> ParzenEstimator:
        return ParzenEstimator(self.encoding, points, np.array(weights), width, prior_weight)
