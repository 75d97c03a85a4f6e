"""Tuning algorithms with NNI's tuner interface, built by NNI's names and classArgs.

>>> space = {"lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}}
>>> tuner = create_tuner("TPE", {"optimize_mode": "maximize", "seed": 1}, space)
>>> params = tuner.generate_parameters(0)
>>> tuner.receive_trial_result(0, params, 0.93)

Every built-in tuner is pure and synchronous (no I/O, no threads) and reproducible: the same seed
and the same sequence of calls give the same suggestions. Their names, aliases and classArgs are
:mod:`shared.algorithms`'s; :data:`BUILDERS` makes each from its checked classArgs.
A custom tuner (NNI's ``className``) runs in the experiment's worker process:
:class:`RemoteTuner` stands for it here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np

from shared import algorithms

from .batch import BatchTuner
from .bohb import BohbAdvisor, BohbSettings
from .custom import RemoteTuner
from .dngo import DngoSettings, DngoTuner
from .errors import NoMoreTrials, TunerConfigError, WaitForResults
from .gp import GpSettings, GpTuner
from .hyperband import HyperbandAdvisor
from .metis import MetisSettings, MetisTuner
from .pbt import PbtSettings, PbtTuner
from .simple import AnnealTuner, EvolutionTuner, GridSearchTuner, RandomTuner
from .tpe import TpeSettings, TpeTuner

S = TypeVar("S")

__all__ = [
    "BUILDERS",
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


def _tpe(a: dict[str, Any]) -> Tuner:
    return TpeTuner(seed=a["seed"], minimize=_minimize(a), settings=TpeSettings(**a["tpe_args"]))


def _random(a: dict[str, Any]) -> Tuner:
    return RandomTuner(seed=a["seed"])  # optimize_mode is checked, but random search has no direction


def _grid(a: dict[str, Any]) -> Tuner:
    return GridSearchTuner(seed=0)


def _anneal(a: dict[str, Any]) -> Tuner:
    return AnnealTuner(seed=a["seed"], minimize=_minimize(a))


def _evolution(a: dict[str, Any]) -> Tuner:
    return EvolutionTuner(seed=a["seed"], minimize=_minimize(a), population_size=a["population_size"])


def _batch(a: dict[str, Any]) -> Tuner:
    return BatchTuner()


def _gp(a: dict[str, Any]) -> Tuner:
    return GpTuner(seed=a["seed"], minimize=_minimize(a), settings=_settings(GpSettings, a))


def _metis(a: dict[str, Any]) -> Tuner:
    return MetisTuner(seed=a["seed"], minimize=_minimize(a), settings=_settings(MetisSettings, a))


def _dngo(a: dict[str, Any]) -> Tuner:
    return DngoTuner(seed=a["seed"], minimize=_minimize(a), settings=_settings(DngoSettings, a))


def _hyperband(a: dict[str, Any]) -> Tuner:
    return HyperbandAdvisor(seed=_seed(a), minimize=_minimize(a), R=a["R"], eta=a["eta"],
                            exec_mode=a["exec_mode"])


def _bohb(a: dict[str, Any]) -> Tuner:
    return BohbAdvisor(seed=_seed(a), minimize=_minimize(a), min_budget=a["min_budget"],
                       max_budget=a["max_budget"], eta=a["eta"], settings=_settings(BohbSettings, a))


def _pbt(a: dict[str, Any]) -> Tuner:
    return PbtTuner(seed=_seed(a), minimize=_minimize(a), settings=_settings(PbtSettings, a))


def _minimize(a: dict[str, Any]) -> bool:
    return bool(a["optimize_mode"] == "minimize")


def _seed(a: dict[str, Any]) -> int:
    """The given seed, or a fresh one (an advisor's seed is recorded so that a rebuild repeats it)."""
    return int(np.random.default_rng().integers(2**31)) if a["seed"] is None else int(a["seed"])


def _settings(settings: type[S], a: dict[str, Any]) -> S:
    """An algorithm's settings dataclass from the classArgs that are its fields."""
    names = {field.name for field in dataclasses.fields(settings)}  # type: ignore[arg-type]
    return settings(**{key: value for key, value in a.items() if key in names})


#: How each built-in tuner of :data:`shared.algorithms.TUNERS` is built from its checked classArgs.
BUILDERS: dict[str, Callable[[dict[str, Any]], Tuner]] = {
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
    try:
        algorithm = algorithms.find("tuner", name)
    except ValueError:
        known = ", ".join(algorithms.TUNERS)
        raise TunerConfigError(
            str(name), f"unknown tuner; built-in tuners are {known} (or give className)") from None
    try:
        checked = algorithms.read_class_args(algorithm, class_args)
    except algorithms.ClassArgsError as exc:
        raise TunerConfigError(exc.algorithm, exc.reason, exc.argument) from None
    return BUILDERS[algorithm.name](checked)
