"""Unit tests for shared.config: NNI v2 experiment configs as NNI accepts them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import (
    AmlConfig,
    LocalConfig,
    load_experiment_config,
    parse_duration,
    parse_experiment_config,
)
from shared.errors import ConfigError

DATA = Path(__file__).parent / "data"
SEED = DATA / "seed_aml" / "config_aml.yml"
SEED_TEMPLATE = DATA / "seed_aml" / "config_aml_template.yml"
SPACE = {
    "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
    "layers": {"_type": "randint", "_value": [1, 4]},
}


def local_config(**overrides: Any) -> dict[str, Any]:
    """A small valid local config; ``None`` removes a key."""
    data: dict[str, Any] = {
        "searchSpace": SPACE,
        "trialCommand": "python3 train.py",
        "trialConcurrency": 2,
        "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def problems(data: dict[str, Any], base_dir: Path | None = None) -> list[tuple[str, str]]:
    """The (field, reason) pairs the config is rejected with."""
    with pytest.raises(ConfigError) as info:
        parse_experiment_config(data, base_dir)
    return info.value.errors


def fields(data: dict[str, Any], base_dir: Path | None = None) -> list[str]:
    return [field for field, _ in problems(data, base_dir)]


# ---------------------------------------------------------------- the seed document


def test_seed_config_validates() -> None:
    config = load_experiment_config(SEED)
    assert config.experiment_name == "example_mnist"
    assert config.trial_command == "python3 mnist.py"
    assert config.trial_code_directory == SEED.parent.resolve()
    assert config.trial_concurrency == 1
    assert config.trial_gpu_number == 1
    assert config.max_experiment_duration == 3600.0
    assert config.max_trial_number == 10
    assert config.tuner.name == "TPE"
    assert config.tuner.class_args == {"optimize_mode": "maximize"}
    assert set(config.search_space) == {"batch_size", "hidden_size", "lr", "momentum"}
    service = config.training_service
    assert isinstance(service, AmlConfig)
    assert (service.subscription_id, service.resource_group) == (
        "00000000-1111-2222-3333-444444444444",
        "tunebus-rg",
    )
    assert (service.workspace_name, service.compute_target) == ("tunebus-ws", "gpu-cluster")
    assert service.docker_image == "msranni/nni"
    assert service.max_trial_number_per_gpu == 1
    assert service.use_active_gpu is False
    storage = config.shared_storage
    assert storage is not None
    assert storage.storage_account_key is not None
    assert storage.storage_account_key.get_secret_value() == "c2VjcmV0LWFjY291bnQta2V5"
    assert storage.local_mount_point == Path("/mnt/data")
    assert storage.local_mounted == "usermount"


def test_seed_template_names_every_unfilled_placeholder() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment_config(SEED_TEMPLATE)
    found = dict(info.value.errors)
    for field in (
        "trainingService.subscription_id",
        "trainingService.resource_group",
        "trainingService.workspace_name",
        "trainingService.compute_target",
        "sharedStorage.storage_account_name",
        "sharedStorage.container_name",
        "sharedStorage.storage_account_key",
    ):
        assert found[field].startswith("placeholder not filled in"), field
    assert "trainingService.subscription_id: placeholder not filled in" in str(info.value)
    assert str(SEED_TEMPLATE) in str(info.value)


def test_shell_variables_in_trial_command_are_not_placeholders(tmp_path: Path) -> None:
    config = parse_experiment_config(
        local_config(trialCommand="python3 train.py --data ${DATA_DIR}"), tmp_path
    )
    assert "${DATA_DIR}" in config.trial_command
    assert fields(local_config(trialCommand="python3 ${replace_to_your_script}")) == ["trialCommand"]
    assert fields(local_config(experimentName="${your experiment}")) == ["experimentName"]


def test_normalized_masks_secrets_and_is_canonical() -> None:
    normalized = load_experiment_config(SEED).normalized()
    assert normalized["sharedStorage"]["storageAccountKey"] == "***"
    assert "c2VjcmV0LWFjY291bnQta2V5" not in json.dumps(normalized)
    assert normalized["maxExperimentDuration"] == 3600.0
    assert normalized["trialCodeDirectory"] == str(SEED.parent.resolve())
    assert normalized["searchSpace"]["momentum"] == {"_type": "uniform", "_value": [0, 1]}
    assert "searchSpaceFile" not in normalized
    assert normalized["trainingService"]["subscriptionId"] == "00000000-1111-2222-3333-444444444444"
    assert normalized["sharedStorage"]["localMounted"] == "usermount"
    assert normalized["logLevel"] == "info"
    assert "assessor" not in normalized  # unset optional fields are left out
    assert all("_" not in key for key in normalized)  # camelCase keys


def test_to_wire_round_trips_without_files_or_secrets() -> None:
    config = load_experiment_config(SEED)
    wire = config.to_wire()
    assert "storageAccountKey" not in wire["sharedStorage"]  # left out, not masked
    assert "c2VjcmV0LWFjY291bnQta2V5" not in json.dumps(wire)
    assert wire["sharedStorage"]["storageAccountName"]
    assert "searchSpaceFile" not in wire
    again = parse_experiment_config(json.loads(json.dumps(wire)))  # wire mode: no base dir
    assert config.shared_storage is not None
    assert again == config.model_copy(
        update={"shared_storage": config.shared_storage.model_copy(update={"storage_account_key": None})})
    assert again.to_wire() == wire
    assert again.secrets().empty


def test_wire_mode_reads_no_file() -> None:
    assert problems(local_config(searchSpace=None, searchSpaceFile="space.json")) == [
        ("searchSpaceFile", "no file can be read here: give the search space inline")
    ]
    config = parse_experiment_config(local_config(trialCodeDirectory="/no/such/folder"))
    assert config.trial_code_directory == Path("/no/such/folder")  # information only


# ---------------------------------------------------------------- spellings


def test_camel_and_snake_case_keys_are_the_same(tmp_path: Path) -> None:
    camel = {
        "experimentName": "x",
        "searchSpace": SPACE,
        "trialCommand": "python3 train.py",
        "trialConcurrency": 1,
        "trialGpuNumber": 1,
        "maxTrialNumber": 3,
        "maxTrialDuration": "10m",
        "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "minimize"}},
        "trainingService": {"platform": "local", "useActiveGpu": False, "maxTrialNumberPerGpu": 2},
    }
    snake = {
        "experiment_name": "x",
        "search_space": SPACE,
        "trial_command": "python3 train.py",
        "trial_concurrency": 1,
        "trial_gpu_number": 1,
        "max_trial_number": 3,
        "max_trial_duration": "10m",
        "tuner": {"name": "TPE", "class_args": {"optimize_mode": "minimize"}},
        "training_service": {"platform": "local", "use_active_gpu": False, "max_trial_number_per_gpu": 2},
    }
    odd = {"TrialConcurrency" if key == "trialConcurrency" else key: value for key, value in camel.items()}
    expected = parse_experiment_config(camel, tmp_path).normalized()
    assert parse_experiment_config(snake, tmp_path).normalized() == expected
    assert parse_experiment_config(odd, tmp_path).normalized() == expected  # NNI ignores case too
    assert expected["tuner"]["classArgs"] == {"optimize_mode": "minimize"}  # user data keeps its keys


def test_the_same_key_twice_is_an_error() -> None:
    assert problems(local_config(trial_concurrency=3)) == [
        ("trial_concurrency", "given twice (also as trialConcurrency)")
    ]


def test_yaml_booleans(tmp_path: Path) -> None:
    text = yaml.safe_dump(local_config(useAnnotation=False, debug=False))
    text = text.replace("false", "False")
    (tmp_path / "config.yml").write_text(text)
    config = load_experiment_config(tmp_path / "config.yml")
    assert config.use_annotation is False and config.debug is False
    service = parse_experiment_config(
        local_config(trainingService={"platform": "local", "useActiveGpu": "False"}), tmp_path
    ).training_service
    assert isinstance(service, LocalConfig) and service.use_active_gpu is False


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("0.5d", 43200.0),
        ("2H", 7200.0),
        (90, 90.0),
        (1.5, 1.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    config = parse_experiment_config(local_config(maxExperimentDuration=value, maxTrialDuration=value))
    assert config.max_experiment_duration == seconds
    assert config.normalized()["maxTrialDuration"] == seconds


@pytest.mark.parametrize("value", ["1x", "h", "ten minutes", "10", -5, "-1h", 0, "0s", True, "nanh", [1]])
def test_bad_durations_name_the_field(value: object) -> None:
    found = problems(local_config(maxExperimentDuration=value))
    assert [field for field, _ in found] == ["maxExperimentDuration"]
    assert fields(local_config(max_trial_duration=value)) == ["max_trial_duration"]


def test_bad_unit_message() -> None:
    [(_, reason)] = problems(local_config(maxExperimentDuration="1x"))
    assert "'1x'" in reason and "s, m, h or d" in reason


# ---------------------------------------------------------------- required and unknown keys


def test_unknown_top_level_key_is_named() -> None:
    assert problems(local_config(foo=1)) == [("foo", "unknown key")]


def test_unknown_nested_keys_are_named(tmp_path: Path) -> None:
    data = local_config(
        trainingService={"platform": "local", "foo": 1},
        tuner={"name": "TPE", "bar": 2},
        sharedStorage={
            "storageType": "AzureBlob",
            "storageAccountName": "a",
            "containerName": "c",
            "localMountPoint": "/mnt/x",
            "remoteMountPoint": "/x",
            "localMounted": "nomount",
            "baz": 3,
        },
    )
    assert sorted(problems(data, tmp_path)) == [
        ("sharedStorage.baz", "unknown key"),
        ("trainingService.foo", "unknown key"),
        ("tuner.bar", "unknown key"),
    ]


def test_training_service_key_at_top_level_gets_a_hint() -> None:
    assert problems(local_config(useActiveGpu=True)) == [
        ("useActiveGpu", "unknown key (it belongs under trainingService)")
    ]


def test_missing_trial_command_is_named() -> None:
    assert problems(local_config(trialCommand=None)) == [("trialCommand", "required")]
    assert problems(local_config(trialCommand="  ")) == [("trialCommand", "must not be empty")]


def test_trial_command_may_be_set_in_the_training_service() -> None:
    data = local_config(
        trialCommand=None, trainingService={"platform": "local", "trialCommand": "python3 t.py"}
    )
    assert parse_experiment_config(data).trial_command == "python3 t.py"


def test_misspelled_key_reports_unknown_and_missing() -> None:
    data = local_config(trialCommand=None, trialComand="python3 train.py")
    assert sorted(problems(data)) == [("trialComand", "unknown key"), ("trialCommand", "required")]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(local_config(trialConcurrency=0, maxTrialNumber="many", foo=1, tuner={"name": "SMAC"}))
    assert sorted(field for field, _ in found) == ["foo", "maxTrialNumber", "trialConcurrency", "tuner.name"]
    assert "trialConcurrency: input should be greater than or equal to 1" in str(ConfigError(found))


@pytest.mark.parametrize(
    ("key", "value"), [("trialConcurrency", 0), ("trialConcurrency", "2"), ("maxTrialNumber", 0)]
)
def test_counts_must_be_positive_integers(key: str, value: object) -> None:
    assert fields(local_config(**{key: value})) == [key]


def test_use_annotation_is_not_supported() -> None:
    [(field, reason)] = problems(local_config(useAnnotation=True))
    assert field == "useAnnotation" and "not supported" in reason


def test_code_directory_is_resolved_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    config = parse_experiment_config(local_config(trialCodeDirectory="code"), tmp_path)
    assert config.trial_code_directory == tmp_path / "code"
    assert parse_experiment_config(local_config(), tmp_path).trial_code_directory == tmp_path
    [(field, reason)] = problems(local_config(trialCodeDirectory="missing"), tmp_path)
    assert field == "trialCodeDirectory" and reason == f"not a directory: {tmp_path / 'missing'}"


# ---------------------------------------------------------------- search space


def test_inline_and_file_search_spaces_are_the_same(tmp_path: Path) -> None:
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    from_file = parse_experiment_config(
        local_config(searchSpace=None, searchSpaceFile="space.json"), tmp_path
    )
    inline = parse_experiment_config(local_config(), tmp_path)
    assert from_file == inline
    assert from_file.search_space == SPACE


def test_yaml_search_space_file(tmp_path: Path) -> None:
    (tmp_path / "space.yml").write_text(yaml.safe_dump(SPACE))
    config = parse_experiment_config(local_config(searchSpace=None, search_space_file="space.yml"), tmp_path)
    assert config.search_space == SPACE


def test_both_search_spaces_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    assert problems(local_config(searchSpaceFile="space.json"), tmp_path) == [
        ("searchSpaceFile", "give searchSpace or searchSpaceFile, not both")
    ]


def test_no_search_space_is_an_error() -> None:
    [(field, reason)] = problems(local_config(searchSpace=None))
    assert field == "searchSpace" and reason.startswith("required")


def test_missing_search_space_file_is_named(tmp_path: Path) -> None:
    [(field, reason)] = problems(local_config(searchSpace=None, searchSpaceFile="nope.json"), tmp_path)
    assert field == "searchSpaceFile" and "cannot read" in reason


def test_randint_low_not_below_high_names_the_parameter(tmp_path: Path) -> None:
    bad = {"layers": {"_type": "randint", "_value": [5, 5]}}
    [(field, reason)] = problems(local_config(searchSpace=bad))
    assert field == "searchSpace.layers" and reason
    (tmp_path / "space.json").write_text(json.dumps(bad))
    [(field, _)] = problems(local_config(searchSpace=None, searchSpaceFile="space.json"), tmp_path)
    assert field == "searchSpaceFile.layers"


# ---------------------------------------------------------------- algorithms


def test_unknown_tuner_name() -> None:
    [(field, reason)] = problems(local_config(tuner={"name": "smac"}))
    assert field == "tuner.name"
    assert reason.startswith("NNI's built-in tuner 'smac' is not built into tunebus: "
                             "it needs the smac package")
    [(field, reason)] = problems(local_config(tuner={"name": "PPOTuner"}))
    assert reason == ("NNI's built-in tuner 'PPOTuner' is not supported by tunebus yet "
                      "(supported: TPE, Random, Anneal, GridSearch, Evolution, Batch, GP, Metis, DNGO, "
                      "Hyperband, BOHB, PBT)")
    [(_, reason)] = problems(local_config(tuner={"name": "Grid"}))
    assert reason.startswith("tuner 'Grid' is not supported (supported: TPE,")


def test_nni_aliases_of_builtin_tuners_are_read_as_their_names() -> None:
    assert parse_experiment_config(local_config(tuner={"name": "GPTuner"})).tuner.name == "GP"
    assert parse_experiment_config(local_config(tuner={"name": "batchtuner"})).tuner.name == "Batch"
    for alias, name in (("MetisTuner", "Metis"), ("DNGOTuner", "DNGO"), ("pbttuner", "PBT")):
        assert parse_experiment_config(local_config(tuner={"name": alias})).tuner.name == name


def test_builtin_names_match_case_insensitively_like_nni() -> None:
    config = parse_experiment_config(local_config(tuner={"name": "tpe"}, assessor={"name": "medianstop"}))
    assert config.tuner.name == "TPE"
    assert config.assessor is not None and config.assessor.name == "Medianstop"
    assert fields(local_config(assessor={"name": "TPE"})) == ["assessor.name"]


def test_tuner_is_required_like_nni() -> None:
    assert problems(local_config(tuner=None)) == [("tuner", "required")]


def test_advisor_is_read_as_the_tuner() -> None:
    config = parse_experiment_config(local_config(tuner=None, advisor={"name": "Random"}))
    assert config.tuner.name == "Random"
    assert fields(local_config(advisor={"name": "Random"})) == ["advisor"]
    hyperband = {"name": "Hyperband", "classArgs": {"optimize_mode": "maximize", "R": 27}}
    assert parse_experiment_config(local_config(tuner=None, advisor=hyperband)).tuner.name == "Hyperband"
    assert parse_experiment_config(local_config(tuner=None, advisor={"name": "PBTTuner"})).tuner.name == "PBT"
    assert fields(local_config(tuner=None, advisor={"name": "PPOTuner"})) == ["advisor.name"]


def test_custom_algorithm_needs_class_name_and_code_directory(tmp_path: Path) -> None:
    (tmp_path / "tuners").mkdir()
    custom = {"className": "my_tuner.MyTuner", "codeDirectory": "tuners", "classArgs": {"a": 1}}
    config = parse_experiment_config(local_config(tuner=custom), tmp_path)
    assert config.tuner.class_name == "my_tuner.MyTuner"
    assert config.tuner.code_directory == tmp_path / "tuners"
    assert problems(local_config(tuner={"className": "my_tuner.MyTuner"}), tmp_path) == [
        ("tuner", "codeDirectory is required with className")
    ]
    assert fields(
        local_config(tuner={"name": "TPE", "className": "x.Y", "codeDirectory": "tuners"}), tmp_path
    ) == ["tuner"]


def test_custom_code_travels_as_an_archive_never_as_a_host_path(tmp_path: Path) -> None:
    (tmp_path / "tuners").mkdir()
    custom = {"className": "my_tuner.MyTuner", "codeDirectory": "tuners", "classArgs": {"a": 1}}
    config = parse_experiment_config(local_config(tuner=custom, assessor=custom), tmp_path)
    wire = config.to_wire()
    assert wire["tuner"] == {"className": "my_tuner.MyTuner", "classArgs": {"a": 1}}
    assert "codeDirectory" not in wire["assessor"]
    assert parse_experiment_config(wire).tuner.class_name == "my_tuner.MyTuner"  # wire mode: no folder
    # A start message naming a folder on some host is refused, naming the field and the way out.
    [(field, reason)] = problems(local_config(tuner={"className": "evil.T", "codeDirectory": "/etc"}))
    assert field == "tuner" and "codeDirectory '/etc': a start message cannot name a folder" in reason
    assert "experiments/<id>/algorithms/tuner.tar.gz" in reason


def test_a_custom_advisor_is_refused_with_the_way_out(tmp_path: Path) -> None:
    (tmp_path / "advisors").mkdir()
    advisor = {"className": "dummy_advisor.DummyAdvisor", "codeDirectory": "advisors", "classArgs": {"k": 3}}
    [(field, reason)] = problems(local_config(tuner=None, advisor=advisor), tmp_path)
    assert field == "advisor" and "a custom advisor (className) is not supported" in reason
    assert "nni.tuner.Tuner" in reason


# ---------------------------------------------------------------- training services and storage


def test_unsupported_platform() -> None:
    assert problems(local_config(trainingService={"platform": "remote", "machineList": []})) == [
        ("trainingService.platform", "'remote' is not supported (supported: local, aml)")
    ]


def test_missing_platform() -> None:
    assert problems(local_config(trainingService={"useActiveGpu": False})) == [
        ("trainingService.platform", "required")
    ]


def test_training_service_as_a_one_element_list() -> None:
    config = parse_experiment_config(
        local_config(trainingService=[{"platform": "local", "gpuIndices": "0,1"}])
    )
    assert isinstance(config.training_service, LocalConfig)
    assert config.training_service.gpu_indices == [0, 1]
    assert problems(local_config(trainingService=[{"platform": "local", "bad": 1}])) == [
        ("trainingService[0].bad", "unknown key")
    ]
    assert fields(local_config(trainingService=[{"platform": "local"}, {"platform": "aml"}])) == [
        "trainingService"
    ]


def test_aml_requires_its_workspace_fields() -> None:
    found = problems(local_config(trainingService={"platform": "aml", "subscription_id": "s"}))
    assert sorted(found) == [
        ("trainingService.computeTarget", "required"),
        ("trainingService.resourceGroup", "required"),
        ("trainingService.workspaceName", "required"),
    ]


def test_aml_defaults() -> None:
    service = parse_experiment_config(
        local_config(
            trainingService={
                "platform": "aml",
                "subscriptionId": "s",
                "resourceGroup": "g",
                "workspaceName": "w",
                "computeTarget": "c",
            }
        )
    ).training_service
    assert isinstance(service, AmlConfig)
    assert (service.docker_image, service.max_trial_number_per_gpu, service.use_active_gpu) == (
        "msranni/nni",
        1,
        False,
    )


def test_local_gpus_follow_nni_rules() -> None:
    assert fields(local_config(trialGpuNumber=1)) == ["trainingService.useActiveGpu"]
    service = {"platform": "local", "maxTrialNumberPerGpu": 2}
    assert fields(local_config(trainingService=service)) == ["trainingService.maxTrialNumberPerGpu"]
    assert fields(local_config(trainingService={"platform": "local", "gpuIndices": [0, 0]})) == [
        "trainingService.gpuIndices"
    ]


def test_nfs_storage_is_not_supported() -> None:
    storage = {"storageType": "NFS", "nfsServer": "n", "exportedDirectory": "/e"}
    assert problems(local_config(sharedStorage=storage)) == [
        ("sharedStorage.storageType", "'NFS' is not supported (supported: AzureBlob)")
    ]


def test_storage_key_is_optional_and_never_shown(tmp_path: Path) -> None:
    storage = {
        "storageType": "AzureBlob",
        "storageAccountName": "a",
        "containerName": "c",
        "localMountPoint": "data",
        "remoteMountPoint": "/x",
        "localMounted": "nnimount",
    }
    config = parse_experiment_config(local_config(sharedStorage=storage), tmp_path)
    assert config.shared_storage is not None and config.shared_storage.local_mount_point == tmp_path / "data"
    assert "storageAccountKey" not in config.normalized()["sharedStorage"]
    found = problems(local_config(sharedStorage={**storage, "storageAccountKey": 12345, "localMounted": "x"}))
    assert sorted(field for field, _ in found) == [
        "sharedStorage.localMounted",
        "sharedStorage.storageAccountKey",
    ]
    assert "12345" not in str(ConfigError(found))


def test_config_error_is_a_value_error() -> None:
    error = ConfigError([("a.b", "bad"), ("c", "worse")])
    assert isinstance(error, ValueError)
    assert "a.b: bad" in str(error) and "c: worse" in str(error)


def test_unreadable_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiment_config(tmp_path / "nope.yml")
    (tmp_path / "bad.yml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment_config(tmp_path / "bad.yml")
    (tmp_path / "list.yml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment_config(tmp_path / "list.yml")


def test_seed_fixture_differs_from_the_seed_only_in_placeholders() -> None:
    template = SEED_TEMPLATE.read_text().splitlines()
    filled = SEED.read_text().splitlines()
    assert len(template) == len(filled) == 30
    for seed_line, filled_line in zip(template, filled, strict=True):
        assert seed_line == filled_line or "${replace_to_your_" in seed_line


def test_log_level_follows_debug_like_nni() -> None:
    assert parse_experiment_config(local_config()).log_level == "info"
    assert parse_experiment_config(local_config(debug=True)).log_level == "debug"
    assert parse_experiment_config(local_config(debug=True, logLevel="WARNING")).log_level == "warning"
    assert fields(local_config(logLevel="loud")) == ["logLevel"]
