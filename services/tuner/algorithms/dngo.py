"""NNI's ``DNGO`` tuner (alias ``DNGOTuner``): Bayesian optimisation with a neural network.

Details: :class:`DngoTuner`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from .base import Internal, Observation
from .gp import GpSettings, GpTuner

__all__ = ["DngoSettings", "DngoTuner", "NeuralBayesRegressor"]

_HIDDEN = 50  # pybnn's n_units_1..3
_BATCH = 10  # pybnn's batch_size
_LEARNING_RATE = 0.01
_ALPHA_START, _BETA_START = 1.0, 1000.0  # pybnn's initial precisions
_PRECISION_BOUNDS = (1e-6, 1e8)
_EVIDENCE_ROUNDS = 200


@dataclass(frozen=True)
class DngoSettings:
    """NNI's DNGOTuner classArgs (besides optimize_mode) with NNI's defaults."""

    sample_size: int = 1000
    trials_per_update: int = 20
    num_epochs_per_training: int = 500


class DngoTuner(GpTuner):
    """NNI's ``DNGO`` tuner (the GP tuner's search space checks and unit cube are reused).

    DNGO (Snoek et al., 2015), as NNI uses it through pybnn: a small network (three hidden layers of 50
    tanh units) is trained on the results, and a Bayesian linear regression on its last hidden layer
    gives each prediction a mean and a variance; the regression's weight and noise precisions are the
    ones that maximise its marginal likelihood. As in NNI's DNGOTuner, suggestions are random until
    ``trials_per_update`` results are in; the model is then retrained (``num_epochs_per_training``
    epochs) each time ``trials_per_update`` more results have come in, and each suggestion is the
    best, by expected improvement, of ``sample_size`` random configurations.

    Search-space types are NNI's for DNGO: ``choice`` of numbers, ``randint``, ``uniform``,
    ``quniform``, ``loguniform``, ``qloguniform``.

    Differences from NNI, on purpose: this network is plain numpy (no torch, no pybnn), trained in the
    unit cube of the GP tuner (log types on a log scale); expected improvement is measured from the
    best result so far and maximised in both modes (NNI's measures it from a fixed 0.95, treats the
    variance as the standard deviation, and minimises it in ``minimize`` mode); the training data are
    put in a canonical order and the network's initial weights come from the experiment's seed, so a
    model retrained on the same results is the same model (a rebuilt tuner retrains on all of them,
    as NNI's import_data does); trials in flight are believed to score what the model predicts there
    (:meth:`NeuralBayesRegressor.believing`), as in the GP tuner, so parallel suggestions spread out
    (NNI's model knows only finished trials).
    """

    name = "DNGO"

    def __init__(self, *, seed: int | None = None, minimize: bool = False,
                 settings: DngoSettings | None = None) -> None:
        super().__init__(seed=seed, minimize=minimize, settings=GpSettings(cold_start_num=0))
        self.dngo = settings or DngoSettings()
        self.model: NeuralBayesRegressor | None = None
        self._replaying = False  # learning many results at once: train once, at the end

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.model = None
        self._replaying = True
        try:
            super().update_search_space(search_space)
        finally:
            self._replaying = False
        self._train()  # on the results kept from an earlier space, if enough

    def import_data(self, data: Any) -> int:
        self._replaying = True
        try:
            learned = super().import_data(data)
        finally:
            self._replaying = False
        self._train()  # as NNI: retrain on everything imported
        return learned

    def _on_observation(self, observation: Observation) -> None:
        if self._replaying:
            return
        # As NNI: the network is trained each time the count of results reaches a multiple of
        # trials_per_update. In between, its last layer takes in each new result.
        if len(self.history) % self.dngo.trials_per_update == 0:
            self._train()
        elif self.model is not None:
            self.model.fit_last_layer(*self._training_data())

    def _train(self) -> None:
        if len(self.history) < self.dngo.trials_per_update:
            return
        x, y = self._training_data()
        rng = np.random.default_rng([self.seed, len(self.history)])
        self.model = NeuralBayesRegressor(x.shape[1], rng).fit(x, y, self.dngo.num_epochs_per_training, rng)

    def _training_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The results in a canonical order: the same results make the same model, whatever their order."""
        data = sorted(((self._to_cube(o.internal), o.loss) for o in self.history),
                      key=lambda item: json.dumps(item[0].round(12).tolist()))
        return np.array([u for u, _ in data]), np.array([loss for _, loss in data])

    def _model_for_suggestion(self) -> NeuralBayesRegressor:
        """The model, believing each trial in flight scored what it predicts there (as the GP)."""
        assert self.model is not None
        if not self.pending:
            return self.model
        return self.model.believing(np.array([self._to_cube(p) for p in self.pending.values()]))

    def _suggest(self, parameter_id: Any, rng: np.random.Generator) -> Internal:
        if self.model is None:
            return self._sample_prior(rng)
        candidates = [self._sample_prior(rng) for _ in range(self.dngo.sample_size)]
        model = self._model_for_suggestion()
        mean, std = model.predict(np.array([self._to_cube(c) for c in candidates]))
        best = min(o.loss for o in self.history)
        z = (best - mean) / std
        from scipy.special import ndtr  # lazily: `tunebus create` builds tuners to check them

        improvement = (best - mean) * ndtr(z) + std * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        for index in np.argsort(-improvement, kind="stable"):
            if not self._is_seen(candidates[int(index)]):
                return candidates[int(index)]
        return candidates[0]


class NeuralBayesRegressor:
    """A tanh network whose last hidden layer feeds a Bayesian linear regression (DNGO's model)."""

    def __init__(self, dim: int, rng: np.random.Generator) -> None:
        sizes = [dim, _HIDDEN, _HIDDEN, _HIDDEN, 1]
        # Glorot-uniform weights, zero biases (what torch's defaults approximate for tanh layers).
        self.weights = [rng.uniform(-1, 1, (a, b)) * math.sqrt(6.0 / (a + b)) for a, b in pairwise(sizes)]
        self.biases = [np.zeros(b) for b in sizes[1:]]
        self._y_mean, self._y_std = 0.0, 1.0

    # ------------------------------------------------------------ the network

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        """Activations of every layer (the last is the output)."""
        out = [x]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = out[-1] @ w + b
            out.append(z if i == len(self.weights) - 1 else np.tanh(z))
        return out

    def _train_network(self, x: np.ndarray, z: np.ndarray, epochs: int, rng: np.random.Generator) -> None:
        """Mean squared error, Adam, mini-batches of 10 (pybnn's training)."""
        params = [*self.weights, *self.biases]
        moments = [np.zeros_like(p) for p in params]
        squares = [np.zeros_like(p) for p in params]
        step = 0
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), _BATCH):
                rows = order[start:start + _BATCH]
                grads = self._gradients(x[rows], z[rows])
                step += 1
                for p, g, m, v in zip(params, grads, moments, squares, strict=True):
                    m *= 0.9
                    m += 0.1 * g
                    v *= 0.999
                    v += 0.001 * g * g
                    p -= _LEARNING_RATE * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)

    def _gradients(self, x: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
        acts = self._forward(x)
        delta = 2.0 * (acts[-1][:, 0] - z)[:, None] / len(x)
        weight_grads: list[np.ndarray] = []
        bias_grads: list[np.ndarray] = []
        for layer in range(len(self.weights) - 1, -1, -1):
            weight_grads.insert(0, acts[layer].T @ delta)
            bias_grads.insert(0, delta.sum(axis=0))
            if layer:
                delta = (delta @ self.weights[layer].T) * (1.0 - acts[layer] ** 2)
        return [*weight_grads, *bias_grads]

    # ------------------------------------------------------------ the Bayesian last layer

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int,
            rng: np.random.Generator) -> NeuralBayesRegressor:
        """Train the network on standardised y, then its Bayesian last layer."""
        self._y_mean, self._y_std = float(y.mean()), float(y.std()) or 1.0
        self._train_network(x, (y - self._y_mean) / self._y_std, epochs, rng)
        return self.fit_last_layer(x, y)

    def fit_last_layer(self, x: np.ndarray, y: np.ndarray) -> NeuralBayesRegressor:
        """The Bayesian regression on the trained network's features; its weight and noise
        precisions maximise the evidence (MacKay's fixed point, Bishop 3.92 and 3.95)."""
        z = (y - self._y_mean) / self._y_std
        phi = self._features(x)
        eigenvalues, basis = np.linalg.eigh(phi.T @ phi)
        eigenvalues = np.maximum(eigenvalues, 0.0)
        projected = basis.T @ (phi.T @ z)
        alpha, beta = _ALPHA_START, _BETA_START
        for _ in range(_EVIDENCE_ROUNDS):
            weights = basis @ (beta * projected / (beta * eigenvalues + alpha))
            gamma = float(np.sum(beta * eigenvalues / (beta * eigenvalues + alpha)))
            residual = float(np.sum((z - phi @ weights) ** 2))
            new_alpha = float(np.clip(gamma / max(float(weights @ weights), 1e-12), *_PRECISION_BOUNDS))
            new_beta = float(np.clip((len(z) - gamma) / max(residual, 1e-12), *_PRECISION_BOUNDS))
            done = abs(math.log(new_alpha / alpha)) + abs(math.log(new_beta / beta)) < 1e-6
            alpha, beta = new_alpha, new_beta
            if done:
                break
        self._covariance = basis @ np.diag(1.0 / (beta * eigenvalues + alpha)) @ basis.T
        self._weights = beta * self._covariance @ phi.T @ z
        self._noise = 1.0 / beta
        return self

    def believing(self, x: np.ndarray) -> NeuralBayesRegressor:
        """A copy whose last layer has also seen the rows of ``x``, each with the value it predicts
        there (a kriging believer): the mean is unchanged, the weights' covariance shrinks along
        those points' features (a rank-``len(x)`` update), so their uncertainty falls."""
        phi = self._features(x)
        spread = self._covariance @ phi.T
        gain = np.linalg.solve(phi @ spread + self._noise * np.eye(len(phi)), spread.T)
        other = copy.copy(self)
        other._covariance = self._covariance - spread @ gain
        return other

    def _features(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)[-2]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation at the rows of ``x``, in the units of y."""
        phi = self._features(x)
        mean = phi @ self._weights
        variance = np.einsum("ij,jk,ik->i", phi, self._covariance, phi) + self._noise
        return mean * self._y_std + self._y_mean, np.sqrt(np.maximum(variance, 1e-12)) * self._y_std

