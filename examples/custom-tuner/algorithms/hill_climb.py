"""A custom NNI tuner: random points first, then small steps around the best point so far.

Written against NNI's API only (``nni.tuner.Tuner``, ``nni.utils``, ``nni.common.hpo_utils``):
it runs the same under NNI (``codeDirectory`` + ``className: hill_climb.HillClimbTuner``).
"""

import random

import nni
from nni.common.hpo_utils import deformat_parameters, format_parameters, format_search_space
from nni.tuner import Tuner
from nni.utils import OptimizeMode, extract_scalar_reward


class HillClimbTuner(Tuner):
    def __init__(self, optimize_mode="maximize", startup_trials=4, step=0.1, seed=None):
        self.mode = OptimizeMode(optimize_mode)
        self.startup_trials = startup_trials
        self.step = step
        self.rng = random.Random(seed)
        self.space = {}
        self.best = None  # (reward, formatted parameters)
        self.results = 0

    def update_search_space(self, search_space):
        self.space = format_search_space(search_space)

    def generate_parameters(self, parameter_id, **kwargs):
        if not self.space:
            raise nni.NoMoreTrialError("no search space")
        if self.best is None or self.results < self.startup_trials:
            formatted = {key: self._draw(spec) for key, spec in self.space.items()}
        else:
            formatted = {key: self._near(spec, self.best[1][key]) for key, spec in self.space.items()}
        return deformat_parameters(formatted, self.space)

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        self._learn(parameters, extract_scalar_reward(value))

    def import_data(self, data):
        # A restarted tuner service (or NNI's import) hands back the trials so far.
        for record in data:
            self._learn(record["parameter"], extract_scalar_reward(record["value"]))

    def _learn(self, parameters, reward):
        self.results += 1
        if self.mode is OptimizeMode.Minimize:
            reward = -reward
        if self.best is None or reward > self.best[0]:
            self.best = (reward, format_parameters(parameters, self.space))

    def _draw(self, spec):
        if spec.categorical:
            return self.rng.randrange(spec.size)
        return self.rng.uniform(spec.low, spec.high)

    def _near(self, spec, value):
        if spec.categorical:
            return value if self.rng.random() < 0.8 else self.rng.randrange(spec.size)
        width = (spec.high - spec.low) * self.step
        return min(max(value + self.rng.uniform(-width, width), spec.low), spec.high)
