"""Tuning algorithms with NNI's tuner interface, built by NNI's names and classArgs.

>>> space = {"lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}}
>>> tuner = create_tuner("TPE", {"optimize_mode": "maximize", "seed": 1}, space)
>>> params = tuner.generate_parameters(0)
>>> tuner.receive_trial_result(0, params, 0.93)

Every built-in tuner is pure and synchronous (no I/O, no threads) and reproducible: the same seed
and the same sequence of calls give the same suggestions. Built-in names: ``TPE``, ``Random``,
``Anneal``, ``GridSearch``, ``Evolution``, ``Batch``, ``GP``, ``Metis``, ``DNGO``, ``PBT`` and the
advisors ``Hyperband`` and ``BOHB`` (NNI's aliases ``BatchTuner``, ``GPTuner``, ``MetisTuner``,
``DNGOTuner``, ``PBTTuner`` too).
A custom tuner (NNI's ``className``) runs in the experiment's worker process:
:class:`RemoteTuner` stands for it here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from shared import limits
from shared.config import TUNER_ALIASES

from .args import ClassArgs
from .batch import BatchTuner
from .bohb import BohbAdvisor, BohbSettings
from .custom import RemoteTuner
from .dngo import DngoSettings, DngoTuner
from .errors import NoMoreTrials, TunerConfigError, WaitForResults
from .gaussian_process import MATERN_NUS
from .gp import UTILITIES, GpSettings, GpTuner
from .hyperband import EXEC_MODES, HyperbandAdvisor
from .metis import MetisSettings, MetisTuner
from .pbt import PbtSettings, PbtTuner
from .simple import AnnealTuner, EvolutionTuner, GridSearchTuner, RandomTuner
from .tpe import LIAR_TYPES, TpeSettings, TpeTuner

__all__ = [
    "BUILTIN_TUNERS",
    "TUNER_ALIASES",
    "NoMoreTrials",
    "RemoteTuner",
    "Tuner",
    "TunerConfigError",
    "WaitForResults",
    "create_tuner",
]


class Tuner(Protocol):
    """NNI's tuner interface, as every object ``create_tuner`` returns implements it."""

    def update_search_space(self, search_space: dict[str, Any]) -> None: ...
    def generate_parameters(self, parameter_id: Any, **kwargs: Any) -> Any: ...
    def generate_multiple_parameters(self, parameter_id_list: list[Any], **kwargs: Any) -> list[Any]: ...
    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None: ...
    def trial_end(self, parameter_id: Any, success: bool, **kwargs: Any) -> None: ...
    def import_data(self, data: Any) -> Any: ...


def _tpe(args: ClassArgs) -> Tuner:
    minimize = args.optimize_mode(default="minimize")
    seed = args.integer("seed", None, low=0)
    tpe = args.section("tpe_args")
    defaults = TpeSettings()
    settings = TpeSettings(
        constant_liar_type=tpe.one_of("constant_liar_type", defaults.constant_liar_type, [*LIAR_TYPES, None]),
        n_startup_jobs=tpe.integer("n_startup_jobs", defaults.n_startup_jobs, low=0,
                                   high=limits.MAX_CLASS_ARG_COUNT) or 0,
        n_ei_candidates=tpe.integer("n_ei_candidates", defaults.n_ei_candidates, low=1,
                                    high=limits.MAX_CLASS_ARG_POPULATION) or 1,
        linear_forgetting=tpe.integer("linear_forgetting", defaults.linear_forgetting, low=0,
                                      high=limits.MAX_CLASS_ARG_COUNT) or 0,
        prior_weight=tpe.number("prior_weight", defaults.prior_weight, low=0.0,
                                high=limits.MAX_CLASS_ARG_WEIGHT) or 0.0,
        gamma=tpe.number("gamma", defaults.gamma, low=1e-6, high=1.0) or defaults.gamma,
    )
    tpe.reject_unknown()
    return TpeTuner(seed=seed, minimize=minimize, settings=settings)


def _random(args: ClassArgs) -> Tuner:
    args.optimize_mode()  # accepted and checked, but random search has no direction (as in NNI)
    return RandomTuner(seed=args.integer("seed", None, low=0))


def _grid(args: ClassArgs) -> Tuner:
    args.optimize_mode()
    return GridSearchTuner(seed=0)


def _anneal(args: ClassArgs) -> Tuner:
    minimize = args.optimize_mode(default="minimize")
    return AnnealTuner(seed=args.integer("seed", None, low=0), minimize=minimize)


def _evolution(args: ClassArgs) -> Tuner:
    minimize = args.optimize_mode(default="maximize")
    size = args.integer("population_size", 32, low=2, high=limits.MAX_CLASS_ARG_POPULATION) or 32
    return EvolutionTuner(seed=args.integer("seed", None, low=0), minimize=minimize, population_size=size)


def _batch(args: ClassArgs) -> Tuner:
    if args.args:  # NNI registers Batch with acceptClassArgs: false
        raise TunerConfigError("Batch", f"takes no classArgs, got {', '.join(sorted(map(str, args.args)))}")
    return BatchTuner()


def _gp(args: ClassArgs) -> Tuner:
    minimize = args.optimize_mode(default="maximize")
    d = GpSettings()
    warm_up = args.integer("selection_num_warm_up", d.selection_num_warm_up, low=1, high=1_000_000)
    settings = GpSettings(
        utility=args.one_of("utility", d.utility, UTILITIES),
        kappa=_number(args.number("kappa", d.kappa, low=0.0, high=1e6)),
        xi=_number(args.number("xi", d.xi, low=0.0, high=1e6)),
        nu=float(args.one_of("nu", d.nu, MATERN_NUS)),
        alpha=_number(args.number("alpha", d.alpha, low=1e-12, high=1e3)),
        cold_start_num=_integer(args.integer("cold_start_num", d.cold_start_num, low=0,
                                             high=limits.MAX_CLASS_ARG_COUNT)),
        selection_num_warm_up=_integer(warm_up),
        selection_num_starting_points=_integer(
            args.integer("selection_num_starting_points", d.selection_num_starting_points, low=0,
                         high=10_000)),
    )
    return GpTuner(seed=args.integer("seed", None, low=0), minimize=minimize, settings=settings)


def _metis(args: ClassArgs) -> Tuner:
    minimize = args.optimize_mode(default="maximize")
    d = MetisSettings()
    settings = MetisSettings(
        no_resampling=args.flag("no_resampling", d.no_resampling),
        no_candidates=args.flag("no_candidates", d.no_candidates),
        selection_num_starting_points=_integer(args.integer(
            "selection_num_starting_points", d.selection_num_starting_points, low=1, high=100_000)),
        cold_start_num=_integer(args.integer("cold_start_num", d.cold_start_num, low=0,
                                             high=limits.MAX_CLASS_ARG_COUNT)),
        exploration_probability=_number(args.number("exploration_probability", d.exploration_probability,
                                                    low=0.0, high=1.0)),
    )
    return MetisTuner(seed=args.integer("seed", None, low=0), minimize=minimize, settings=settings)


def _dngo(args: ClassArgs) -> Tuner:
    minimize = args.optimize_mode(default="maximize")
    d = DngoSettings()
    settings = DngoSettings(
        sample_size=_integer(args.integer("sample_size", d.sample_size, low=1, high=100_000)),
        trials_per_update=_integer(args.integer("trials_per_update", d.trials_per_update, low=1,
                                                high=100_000)),
        num_epochs_per_training=_integer(args.integer("num_epochs_per_training", d.num_epochs_per_training,
                                                      low=1, high=100_000)),
    )
    return DngoTuner(seed=args.integer("seed", None, low=0), minimize=minimize, settings=settings)


MAX_HYPERBAND_R = 100_000


def _hyperband(args: ClassArgs) -> Tuner:
    if "optimize_mode" not in args.args:  # NNI's HyperbandClassArgsValidator requires it
        raise TunerConfigError("Hyperband", "classArgs.optimize_mode is required ('maximize' or 'minimize')")
    minimize = args.optimize_mode()
    # The first bracket starts about R configurations at once: R is bounded to keep that in memory.
    big_r = _integer(args.integer("R", 60, low=1, high=MAX_HYPERBAND_R))
    eta = _integer(args.integer("eta", 3, low=2, high=MAX_HYPERBAND_R))
    exec_mode = args.one_of("exec_mode", "parallelism", EXEC_MODES)
    seed = args.integer("seed", None, low=0)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    return HyperbandAdvisor(seed=seed, minimize=minimize, R=big_r, eta=eta, exec_mode=exec_mode)


def _bohb(args: ClassArgs) -> Tuner:
    if "optimize_mode" not in args.args:  # NNI's BOHBClassArgsValidator requires it
        raise TunerConfigError("BOHB", "classArgs.optimize_mode is required ('maximize' or 'minimize')")
    if "config_space" in args.args:
        raise TunerConfigError("BOHB", "classArgs.config_space (a ConfigSpace file) is not supported: "
                                       "give the search space in NNI's format")
    minimize = args.optimize_mode()
    d = BohbSettings()
    settings = BohbSettings(
        min_points_in_model=args.integer("min_points_in_model", None, low=0, high=9999),
        top_n_percent=_integer(args.integer("top_n_percent", d.top_n_percent, low=1, high=99)),
        num_samples=_integer(args.integer("num_samples", d.num_samples, low=1, high=9999)),
        random_fraction=_number(args.number("random_fraction", d.random_fraction, low=0.0, high=1.0)),
        bandwidth_factor=_number(args.number("bandwidth_factor", d.bandwidth_factor, low=1e-6, high=9999)),
        min_bandwidth=_number(args.number("min_bandwidth", d.min_bandwidth, low=1e-6, high=1.0)),
    )
    seed = args.integer("seed", None, low=0)
    return BohbAdvisor(
        seed=int(np.random.default_rng().integers(2**31)) if seed is None else seed, minimize=minimize,
        min_budget=_integer(args.integer("min_budget", 1, low=1, high=9999)),
        max_budget=_integer(args.integer("max_budget", 3, low=1, high=9999)),
        eta=_integer(args.integer("eta", 3, low=2, high=9999)), settings=settings)


MAX_CHECKPOINT_DIR_CHARS = 1024


def _pbt(args: ClassArgs) -> Tuner:
    if "optimize_mode" not in args.args:  # NNI's PBTClassArgsValidator requires it
        raise TunerConfigError("PBT", "classArgs.optimize_mode is required ('maximize' or 'minimize')")
    minimize = args.optimize_mode()
    d = PbtSettings()
    settings = PbtSettings(
        # NNI: a folder every trial reaches; None: tunebus keeps them in storage
        all_checkpoint_dir=args.text("all_checkpoint_dir", MAX_CHECKPOINT_DIR_CHARS),
        population_size=_integer(args.integer("population_size", d.population_size, low=1,
                                              high=limits.MAX_CLASS_ARG_POPULATION)),
        factor=_number(args.number("factor", d.factor, low=0.0, high=1e6)),
        resample_probability=_number(args.number("resample_probability", d.resample_probability,
                                                 low=0.0, high=1.0)),
        fraction=_number(args.number("fraction", d.fraction, low=0.0, high=1.0)),
    )
    seed = args.integer("seed", None, low=0)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    return PbtTuner(seed=seed, minimize=minimize, settings=settings)


def _number(value: float | None) -> float:
    assert value is not None  # every caller passes a default
    return value


def _integer(value: int | None) -> int:
    assert value is not None
    return value


BUILTIN_TUNERS: dict[str, Callable[[ClassArgs], Tuner]] = {
    "TPE": _tpe,
    "Random": _random,
    "Anneal": _anneal,
    "GridSearch": _grid,
    "Evolution": _evolution,
    "Batch": _batch,
    "GP": _gp,
    "Hyperband": _hyperband,
    "BOHB": _bohb,
    "PBT": _pbt,
    "Metis": _metis,
    "DNGO": _dngo,
}


def create_tuner(
    name: str | None,
    class_args: Mapping[str, Any] | None,
    search_space: dict[str, Any] | None,
) -> Tuner:
    """Build a built-in tuner from an NNI ``tuner`` config section and give it the search space if any.

    Raises :class:`TunerConfigError` for an unknown name or bad classArgs, and
    ``shared.search_space.SearchSpaceError`` for a bad search space.
    """
    tuner: Tuner = _builtin(name, class_args)
    if search_space is not None:
        tuner.update_search_space(search_space)
    return tuner


def _builtin(name: str | None, class_args: Mapping[str, Any] | None) -> Tuner:
    names = {key.lower(): key for key in BUILTIN_TUNERS}
    names |= {alias.lower(): key for alias, key in TUNER_ALIASES.items()}
    canonical = names.get((name or "").lower())
    if canonical is None:
        known = ", ".join(BUILTIN_TUNERS)
        raise TunerConfigError(str(name), f"unknown tuner; built-in tuners are {known} (or give className)")
    args = ClassArgs(canonical, class_args)
    tuner = BUILTIN_TUNERS[canonical](args)
    args.reject_unknown()
    return tuner
