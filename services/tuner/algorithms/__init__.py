"""Tuning algorithms with NNI's tuner interface, built by NNI's names and classArgs.

>>> space = {"lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}}
>>> tuner = create_tuner("TPE", {"optimize_mode": "maximize", "seed": 1}, space)
>>> params = tuner.generate_parameters(0)
>>> tuner.receive_trial_result(0, params, 0.93)

Every built-in tuner is pure and synchronous (no I/O, no threads) and reproducible: the same seed
and the same sequence of calls give the same suggestions. Built-in names: ``TPE``, ``Random``,
``Anneal``, ``GridSearch``, ``Evolution``. A custom tuner (NNI's ``className``) runs in the
experiment's worker process: :class:`RemoteTuner` stands for it here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from shared import limits

from .args import ClassArgs
from .base import BaseTuner
from .custom import RemoteTuner
from .errors import NoMoreTrials, TunerConfigError
from .simple import AnnealTuner, EvolutionTuner, GridSearchTuner, RandomTuner
from .tpe import LIAR_TYPES, TpeSettings, TpeTuner

__all__ = [
    "BUILTIN_TUNERS",
    "NoMoreTrials",
    "RemoteTuner",
    "Tuner",
    "TunerConfigError",
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


def _tpe(args: ClassArgs) -> BaseTuner:
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


def _random(args: ClassArgs) -> BaseTuner:
    args.optimize_mode()  # accepted and checked, but random search has no direction (as in NNI)
    return RandomTuner(seed=args.integer("seed", None, low=0))


def _grid(args: ClassArgs) -> BaseTuner:
    args.optimize_mode()
    return GridSearchTuner(seed=0)


def _anneal(args: ClassArgs) -> BaseTuner:
    minimize = args.optimize_mode(default="minimize")
    return AnnealTuner(seed=args.integer("seed", None, low=0), minimize=minimize)


def _evolution(args: ClassArgs) -> BaseTuner:
    minimize = args.optimize_mode(default="maximize")
    size = args.integer("population_size", 32, low=2, high=limits.MAX_CLASS_ARG_POPULATION) or 32
    return EvolutionTuner(seed=args.integer("seed", None, low=0), minimize=minimize, population_size=size)


BUILTIN_TUNERS: dict[str, Callable[[ClassArgs], BaseTuner]] = {
    "TPE": _tpe,
    "Random": _random,
    "Anneal": _anneal,
    "GridSearch": _grid,
    "Evolution": _evolution,
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


def _builtin(name: str | None, class_args: Mapping[str, Any] | None) -> BaseTuner:
    canonical = {key.lower(): key for key in BUILTIN_TUNERS}.get((name or "").lower())
    if canonical is None:
        known = ", ".join(BUILTIN_TUNERS)
        raise TunerConfigError(str(name), f"unknown tuner; built-in tuners are {known} (or give className)")
    args = ClassArgs(canonical, class_args)
    tuner = BUILTIN_TUNERS[canonical](args)
    args.reject_unknown()
    return tuner
