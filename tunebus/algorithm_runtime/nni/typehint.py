"""``nni.typehint``: the names NNI's algorithm API uses in its type hints."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = ["ParameterRecord", "Parameters", "SearchSpace", "TrialMetric", "TrialRecord"]

#: What ``generate_parameters`` returns and a trial gets: a dict for the search-space format,
#: anything JSON-serialisable for a custom tuner.
Parameters = dict[str, Any]


class _ParameterSearchSpace(TypedDict):
    _type: Literal["choice", "randint", "uniform", "loguniform", "quniform", "qloguniform",
                   "normal", "lognormal", "qnormal", "qlognormal"]
    _value: list[Any]


#: The experiment's search space, as ``update_search_space`` receives it.
SearchSpace = dict[str, _ParameterSearchSpace]

#: A reported metric: a number (or, for custom code, anything JSON-serialisable).
TrialMetric = float


class TrialRecord(TypedDict):
    """One element of what ``Tuner.import_data`` receives."""

    parameter: Parameters
    value: TrialMetric


class ParameterRecord(TypedDict):
    """How NNI's manager records a trial's parameters."""

    parameter_id: int | None
    parameters: Parameters
    parameter_source: NotRequired[Literal["algorithm", "customized", "resumed"]]
    parameter_index: NotRequired[int]
    trial_job_id: NotRequired[str]
    version_info: NotRequired[dict[str, Any]]
