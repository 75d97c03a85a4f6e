"""tunebus's rendering of NNI's algorithm API (``nni.tuner``, ``nni.assessor``, ``nni.utils``,
``nni.recoverable``) behaves as NNI's does, down to its errors."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from tunebus.algorithm_runtime import nni
from tunebus.algorithm_runtime.nni import assessor, recoverable, tuner, utils


def test_extract_scalar_reward_takes_a_number_or_the_default_key() -> None:
    assert utils.extract_scalar_reward(3) == 3 and utils.extract_scalar_reward(0.5) == 0.5
    assert utils.extract_scalar_reward({"default": 0.9, "loss": 2}) == 0.9
    assert utils.extract_scalar_reward({"acc": 0.7}, scalar_key="acc") == 0.7
    for bad in ({"loss": 1}, "0.5", None, [1], {"default": "x"}):
        with pytest.raises(RuntimeError, match="Incorrect final result"):
            utils.extract_scalar_reward(bad)
    assert utils.extract_scalar_history([1, {"default": 2.5}]) == [1, 2.5]


def test_optimize_mode_split_index_and_convert_dict2tuple() -> None:
    assert utils.OptimizeMode("minimize") is utils.OptimizeMode.Minimize
    with pytest.raises(ValueError):
        utils.OptimizeMode("max")
    nested = {"opt": {"_index": 0, "_value": {"name": "sgd", "lr": {"_index": 2, "_value": 0.1}}}, "n": 3}
    assert utils.split_index(nested) == {"opt": {"name": "sgd", "lr": 0.1}, "n": 3}
    value = {"b": {"d": 1, "c": 2}, "a": 0}
    assert utils.convert_dict2tuple(value) == (("a", 0), ("b", (("c", 2), ("d", 1))))
    assert value["b"] == (("c", 2), ("d", 1)), "as NNI: nested dicts are converted in place"
    assert utils.MetricType.FINAL == "FINAL" and utils.NodeType.INDEX == "_index"


def test_merge_parameter_keeps_types_and_keys() -> None:
    namespace = argparse.Namespace(lr=0.1, epochs=3)
    assert utils.merge_parameter(namespace, {"lr": 1, "epochs": 5}) is namespace
    assert namespace.lr == 1.0 and isinstance(namespace.lr, float) and namespace.epochs == 5
    with pytest.raises(ValueError, match="Key 'momentum' not found"):
        utils.merge_parameter({"lr": 0.1}, {"momentum": 0.9})
    with pytest.raises(ValueError, match="to have type int, but found str"):
        utils.merge_parameter({"epochs": 3}, {"epochs": "5"})


def test_class_args_validator_checks() -> None:
    checks = utils.ClassArgsValidator()
    assert checks.choices("optimize_mode", "maximize", "minimize").validate("maximize") == "maximize"
    with pytest.raises(ValueError, match="optimize_mode should be in"):
        checks.choices("optimize_mode", "maximize", "minimize").validate("max")
    with pytest.raises(ValueError, match=r"k should be in range of \(1, 5\)"):
        checks.range("k", int, 1, 5).validate(9)
    with pytest.raises(ValueError, match="k should be int type"):
        checks.range("k", int, 1, 5).validate(2.0)


class _Counting(tuner.Tuner):
    def generate_parameters(self, parameter_id: int, **kwargs: object) -> dict[str, int]:
        if parameter_id >= 2:
            raise nni.NoMoreTrialError()
        return {"x": parameter_id}


def test_tuner_defaults_are_nnis() -> None:
    counting = _Counting()
    assert counting.generate_multiple_parameters([0, 1, 2, 3]) == [{"x": 0}, {"x": 1}]
    assert str(nni.NoMoreTrialError()) == "Search space fully explored"
    for method, args in (("receive_trial_result", (0, {}, 1.0)), ("update_search_space", ({},))):
        with pytest.raises(NotImplementedError, match=f"Tuner: {method} not implemented"):
            getattr(counting, method)(*args)
    assert counting.trial_end(0, True) is None and counting.import_data([]) is None
    counting.load_checkpoint()
    counting.save_checkpoint()
    with pytest.raises(NotImplementedError, match="Assessor: assess_trial not implemented"):
        assessor.Assessor().assess_trial("t", [1.0])
    assert assessor.AssessResult(True) is assessor.AssessResult.Good
    assert assessor.AssessResult.Bad.value is False


def test_recoverable_reads_nnis_checkpoint_folder_and_resumed_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = recoverable.Recoverable()
    monkeypatch.delenv("NNI_CHECKPOINT_DIRECTORY", raising=False)
    assert hooks.get_checkpoint_path() is None
    monkeypatch.setenv("NNI_CHECKPOINT_DIRECTORY", str(tmp_path))
    assert hooks.get_checkpoint_path() == str(tmp_path)
    records = [{"parameter_id": 4, "parameters": {"x": 1}}, json.dumps({"parameter_id": 7, "parameters": {}}),
               {"parameter_id": "custom", "parameters": {}}]
    assert hooks.recover_parameter_id(records) == 7
    assert hooks.is_created_in_previous_exp(4) and not hooks.is_created_in_previous_exp(8)
    assert not hooks.is_created_in_previous_exp(None) and hooks.get_previous_param(4) == {"x": 1}


SPACE = {
    "act": {"_type": "choice", "_value": ["relu", "tanh"]},
    "layers": {"_type": "randint", "_value": [2, 6]},
    "opt": {"_type": "choice", "_value": [
        {"_name": "sgd", "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
         "batch": {"_type": "quniform", "_value": [16, 64, 5]}},
        {"_name": "adam", "beta": {"_type": "qnormal", "_value": [0.9, 0.05, 0.01]}},
    ]},
}


def test_format_search_space_gives_one_spec_per_parameter_keyed_by_path() -> None:
    from tunebus.algorithm_runtime.nni.common.hpo_utils import format_search_space

    specs = format_search_space(SPACE)
    assert list(specs) == [("act",), ("layers",), ("opt",), ("opt", 0, "lr"), ("opt", 0, "batch"),
                           ("opt", 1, "beta")]
    assert specs[("layers",)].categorical and specs[("layers",)].size == 4
    lr = specs[("opt", 0, "lr")]
    assert lr.log_distributed and lr.low == pytest.approx(math.log(1e-4)) and lr.clip is None
    batch = specs[("opt", 0, "batch")]
    assert batch.q == 5.0 and batch.clip == (16.0, 64.0) and not batch.normal_distributed
    beta = specs[("opt", 1, "beta")]
    assert beta.normal_distributed and (beta.mu, beta.sigma, beta.q, beta.clip) == (0.9, 0.05, 0.01, None)
    assert beta.is_nested() and not specs[("opt",)].is_nested()
    assert beta.is_activated_in({("opt",): 1}) and not beta.is_activated_in({("opt",): 0})


def test_deformat_and_format_parameters_round_trip_as_nni() -> None:
    from tunebus.algorithm_runtime.nni.common.hpo_utils import (
        deformat_parameters,
        format_parameters,
        format_search_space,
    )

    specs = format_search_space(SPACE)
    internal = {("act",): 1, ("layers",): 3, ("opt",): 0, ("opt", 0, "lr"): math.log(0.01),
                ("opt", 0, "batch"): 13.0}  # rounds to 15, then clipped up to 16
    params = deformat_parameters(internal, specs)
    assert params == {"act": "tanh", "layers": 5,
                      "opt": {"_name": "sgd", "lr": pytest.approx(0.01), "batch": 16.0}}
    back = format_parameters(params, specs)
    assert back == {("act",): 1, ("layers",): 3, ("opt",): 0, ("opt", 0, "lr"): pytest.approx(math.log(0.01)),
                    ("opt", 0, "batch"): 16.0}
    adam = deformat_parameters({("act",): 0, ("layers",): 0, ("opt",): 1, ("opt", 1, "beta"): 0.8731}, specs)
    assert adam == {"act": "relu", "layers": 2, "opt": {"_name": "adam", "beta": pytest.approx(0.87)}}
