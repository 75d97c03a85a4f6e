"""NNI's trial API for code that prefers ``import tunebus.trial as nni``.

The functions are those of the ``nni`` shim (``tunebus/trial_runtime/nni``). When that shim is
what ``import nni`` finds (a trial started by tunebus has it first on ``PYTHONPATH``), this
module uses the very same module object, so code mixing ``import nni`` and ``tunebus.trial``
shares one metric sequence. Without any ``nni`` on the path, the shim is registered as ``nni``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = [
    "MetricReportError",
    "get_current_parameter",
    "get_experiment_id",
    "get_next_parameter",
    "get_next_parameters",
    "get_sequence_id",
    "get_trial_id",
    "report_final_result",
    "report_intermediate_result",
]


def _shim_module() -> ModuleType:
    loaded = sys.modules.get("nni")
    if loaded is not None and getattr(loaded, "__tunebus_shim__", False):
        return loaded
    if loaded is None:
        spec = importlib.util.find_spec("nni")
        if spec is not None and spec.origin and _is_shim_file(spec.origin):
            return importlib.import_module("nni")
        if spec is None:
            from tunebus.trial_runtime import nni as shim

            sys.modules["nni"] = shim
            return shim
    # The real NNI is installed (or loaded): keep out of its way.
    from tunebus.trial_runtime import nni as shim

    return shim


def _is_shim_file(origin: str) -> bool:
    try:
        with open(origin, encoding="utf-8") as source:
            return "__tunebus_shim__" in source.read()
    except OSError:
        return False


_nni = _shim_module()

MetricReportError = _nni.MetricReportError
get_current_parameter = _nni.get_current_parameter
get_experiment_id = _nni.get_experiment_id
get_next_parameter = _nni.get_next_parameter
get_next_parameters = _nni.get_next_parameters
get_sequence_id = _nni.get_sequence_id
get_trial_id = _nni.get_trial_id
report_final_result = _nni.report_final_result
report_intermediate_result = _nni.report_intermediate_result
