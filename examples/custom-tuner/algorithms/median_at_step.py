"""A custom NNI assessor: stops a trial whose latest result is worse than the median of what the
trials that finished had reported at the same step."""

import statistics

from nni.assessor import Assessor, AssessResult
from nni.utils import OptimizeMode, extract_scalar_history


class MedianAtStepAssessor(Assessor):
    def __init__(self, optimize_mode="maximize", start_step=2):
        self.maximize = OptimizeMode(optimize_mode) is OptimizeMode.Maximize
        self.start_step = start_step
        self.running = {}
        self.finished = []

    def assess_trial(self, trial_job_id, trial_history):
        history = extract_scalar_history(trial_history)
        self.running[trial_job_id] = history
        step = len(history)
        at_step = [done[step - 1] for done in self.finished if len(done) >= step]
        if step < self.start_step or len(at_step) < 2:
            return AssessResult.Good
        median = statistics.median(at_step)
        worse = history[-1] < median if self.maximize else history[-1] > median
        return AssessResult.Bad if worse else AssessResult.Good

    def trial_end(self, trial_job_id, success):
        history = self.running.pop(trial_job_id, None)
        if success and history:
            self.finished.append(history)
