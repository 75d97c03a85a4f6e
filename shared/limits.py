"""Caps on every number a user gives: the experiment file, classArgs, search spaces, updates.

One place for them, so the config, the ``experiment.update`` message, the CLI and the tuner
agree. They are generous for real experiments (an NNI or Azure ML user does not meet them) and
exist so that a typo or a hostile message cannot ask for a trillion trials or ids, an integer
that no longer fits a machine word, or a search space that takes minutes to read. The README's
experiment-file section lists them; keep the two in step.
"""

from __future__ import annotations

__all__ = [
    "MAX_CHOICE_OPTIONS",
    "MAX_CLASS_ARG_COUNT",
    "MAX_CLASS_ARG_DEPTH",
    "MAX_CLASS_ARG_INT",
    "MAX_CLASS_ARG_NUMBER",
    "MAX_CLASS_ARG_POPULATION",
    "MAX_CLASS_ARG_WEIGHT",
    "MAX_DURATION_SECONDS",
    "MAX_GPU_INDEX",
    "MAX_RANDINT_MAGNITUDE",
    "MAX_SEARCH_SPACE_DEPTH",
    "MAX_SEARCH_SPACE_NUMBER",
    "MAX_SEARCH_SPACE_PARAMETERS",
    "MAX_TRIAL_CONCURRENCY",
    "MAX_TRIAL_GPU_NUMBER",
    "MAX_TRIAL_NUMBER",
    "MAX_TRIAL_NUMBER_PER_GPU",
    "MIN_CLASS_ARG_INT",
    "describe_seconds",
]

#: ``trialConcurrency``: trials running at once (a large AML cluster runs a few hundred).
MAX_TRIAL_CONCURRENCY = 10_000
#: ``maxTrialNumber``: trials in one experiment.
MAX_TRIAL_NUMBER = 1_000_000
#: ``maxExperimentDuration`` and ``maxTrialDuration``: 365 days.
MAX_DURATION_SECONDS = 365 * 24 * 3600.0
#: ``trialGpuNumber``: GPUs per trial (one node has at most 16 today).
MAX_TRIAL_GPU_NUMBER = 64
#: ``maxTrialNumberPerGpu``: trials sharing one GPU.
MAX_TRIAL_NUMBER_PER_GPU = 1_000
#: Largest GPU index in ``gpuIndices`` / ``tunerGpuIndices``.
MAX_GPU_INDEX = 1_023

#: Integers in classArgs (seeds included) must fit a signed 64-bit word.
MAX_CLASS_ARG_INT = 2**63 - 1
MIN_CLASS_ARG_INT = -(2**63)
#: Magnitude of any float in classArgs (finite, and far from overflowing when multiplied).
MAX_CLASS_ARG_NUMBER = 1e300
#: Nesting of objects and lists inside classArgs.
MAX_CLASS_ARG_DEPTH = 32
#: Built-in algorithms' classArgs that count trials or steps (TPE's n_startup_jobs and
#: linear_forgetting, the assessors' start_step, epoch_num and gap): far past maxTrialNumber.
MAX_CLASS_ARG_COUNT = 10_000_000
#: Evolution's population_size and TPE's n_ei_candidates: work per suggestion grows with them.
MAX_CLASS_ARG_POPULATION = 100_000
#: TPE's prior_weight.
MAX_CLASS_ARG_WEIGHT = 1e6

#: Parameters in a search space, nested ones included.
MAX_SEARCH_SPACE_PARAMETERS = 1_000
#: Options of one ``choice`` (TPE keeps a weight per option per observed trial).
MAX_CHOICE_OPTIONS = 10_000
#: Bounds of a ``randint``: an option's index is held as a float, exact up to 2**53.
MAX_RANDINT_MAGNITUDE = 2**53
#: Nested choices inside nested choices.
MAX_SEARCH_SPACE_DEPTH = 16
#: Magnitude of a number in a search space's ``_value`` (bounds, mu, sigma, q).
MAX_SEARCH_SPACE_NUMBER = 1e300


def describe_seconds(seconds: float) -> str:
    """``31536000`` -> ``"365 days (31536000 s)"``: a limit as people read it, and exactly."""
    days = seconds / 86400
    return f"{days:g} days ({seconds:.0f} s)"
