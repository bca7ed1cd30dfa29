"""Every parameter group has a typed schema: unknown keys, wrong types and bad values are refused with the full
setting named (issue 18: data.*, model.*, evaluation.* typos were silently ignored)."""

from __future__ import annotations

import ast
import dataclasses

import pytest
import yaml

from finetune_predictor.errors import UserFacingError
from finetune_predictor.settings_schema import (
    GROUPS,
    DataSettings,
    EvaluationSettings,
    MetaFeaturesSettings,
    ModelSettings,
    PredictorParams,
    SensitivityParams,
    SettingsError,
    TrainingSettings,
    check_parameters,
    parameter_problems,
)
from tests.conftest import PROJECT_ROOT


def _base() -> dict:
    params: dict = {}
    for path in sorted((PROJECT_ROOT / "conf/base").glob("parameters_*.yml")):
        params.update(yaml.safe_load(path.read_text()) or {})
    return params


def _messages(parameters: dict) -> list[str]:
    return [message for _, message in parameter_problems(parameters) if message]


def test_every_shipped_setting_is_accepted_and_every_group_has_a_schema():
    base = _base()
    assert set(base) - {"model_registry"} == set(GROUPS), "a parameter group without a schema"
    assert parameter_problems(base) == []
    for environment in (PROJECT_ROOT / "conf").iterdir():
        for path in environment.glob("parameters_*.yml"):
            for group, values in (yaml.safe_load(path.read_text()) or {}).items():
                merged = {**base.get(group, {}), **values} if isinstance(values, dict) else values
                assert parameter_problems({group: merged}) == [], path


@pytest.mark.parametrize(("group", "values", "message"), [
    ("data", {"train_per_class": "abc"}, "data.train_per_class must be an integer, got 'abc'"),
    ("data", {"train_per_clas": 3}, "Unknown setting(s) data.train_per_clas (did you mean data.train_per_class?)"),
    ("data", {"train_per_class": 0}, "data.train_per_class must be >= 1, got 0"),
    ("data", {"test_per_class": 2.5}, "data.test_per_class must be an integer, got 2.5"),
    ("data", {"header": "yes"}, "data.header must be true or false, got 'yes'"),
    ("data", {"format": "xlsx"}, "data.format must be one of auto, alpaca, sharegpt, csv, tsv, parquet, hf_disk, "
                                 "squad, got 'xlsx'"),
    ("data", {"task": "regression"}, "data.task must be one of "),
    ("data", {"columns": {"outptu": "label"}}, "data.columns.outptu (did you mean data.columns.output?)"),
    ("data", {"columns": {"output": [1]}}, "data.columns.output must be an integer or a string, got [1]"),
    ("data", {"qa": {"group_by": "book"}}, "data.qa.group_by must be one of article, paragraph, got 'book'"),
    ("data", {"synthetic": {"difficulty": "brutal"}}, "data.synthetic.difficulty must be one of easy, standard"),
    ("data", {"label_map": ["a"]}, "data.label_map must be a mapping, got ['a']"),
    ("data", {"label_map": {"half-true": False}}, "data.label_map.half-true must be a string, got False"),
    ("data", {"labels": ["a", ["b"]]}, "data.labels[1] must be a string, got ['b']"),
    ("sensitivity", {"train_per_class": [10, "x"]}, "sensitivity.train_per_class[1] must be an integer, got 'x'"),
    ("data", {"max_record_chars": -1}, "data.max_record_chars must be >= 1"),
    ("model", {"quantisation": "4bit"}, "model.quantisation (did you mean model.quantization?)"),
    ("model", {"quantization": "8bit"}, "model.quantization must be one of none, 4bit, got '8bit'"),
    ("evaluation", {"batch_sise": 4}, "evaluation.batch_sise (did you mean evaluation.batch_size?)"),
    ("evaluation", {"engine": "foo"}, "evaluation.engine must be one of auto, hf, vllm, got 'foo'"),
    ("evaluation", {"label_scoring": "max"}, "evaluation.label_scoring must be one of sum, mean, calibrated"),
    ("training", {"learning_rate": "fast"}, "training.learning_rate must be a number, got 'fast'"),
    ("training", {"learning_rate": 3}, "training.learning_rate must be in (0, 1), got 3"),
    ("training", {"lora": {"r": "x"}}, "training.lora.r must be an integer, got 'x'"),
    ("training", {"precision": "int8"}, "training.precision must be one of auto, fp32, bf16, fp16, got 'int8'"),
    ("preflight", {"memory_margin": 0.5}, "preflight.memory_margin must be >= 1.0, got 0.5"),
    ("meta_features", {"sample_sise": 3}, "meta_features.sample_sise (did you mean meta_features.sample_size?)"),
    ("rank", {"top_reason": 3}, "rank.top_reason (did you mean rank.top_reasons?)"),
    ("forecast", {"curve_family": "exp"}, "forecast.curve_family must be one of auto, pow2, pow3, loglinear, "
                                          "carry_forward, got 'exp'"),
    ("forecast", {"interval_level": 1.5}, "forecast.interval_level must be < 1.0, got 1.5"),
    ("predictor", {"n_fold": 3}, "predictor.n_fold (did you mean predictor.n_folds?)"),
    ("sensitivity", {"executer": "ray"}, "sensitivity.executer (did you mean sensitivity.executor?)"),
    ("sensitivity", {"meta_features": {"probe_step": 3}},
     "sensitivity.meta_features.probe_step (did you mean sensitivity.meta_features.probe_steps?)"),
    ("model_registry", {"x": {"hf": "a/b"}}, "model_registry.x has unknown key(s) ['hf']"),
])
def test_a_wrong_setting_is_named_in_full(group, values, message):
    base = _base()
    merged = {**base[group], **values} if group != "model_registry" else values
    found = _messages({group: merged})
    assert any(message in text for text in found), found


def test_a_misspelt_group_is_refused_and_an_unknown_one_reported():
    unchecked: list[str] = []
    problems = parameter_problems({"dat": {"path": "x"}, "my_own_group": {"a": 1}}, unchecked=unchecked.append)
    assert problems == [("dat", "Unknown parameter group 'dat' (did you mean data?); groups: archive_runs, "
                                "candidate_study, data, evaluation, forecast, meta_features, model, model_registry, "
                                "predictor, preflight, rank, release, sensitivity, training")]
    assert unchecked == ["my_own_group"]


def test_settings_error_is_a_user_error_naming_every_setting():
    with pytest.raises(SettingsError) as info:
        check_parameters({"data": {"train_per_class": "abc", "seeed": 1, "seeds": 2}})
    error = info.value
    assert isinstance(error, UserFacingError) and isinstance(error, ValueError)
    assert set(error.where.split(", ")) == {"data.seeds", "data.seeed", "data.train_per_class"}
    assert "data.train_per_class must be an integer, got 'abc'" in error.what
    assert "conf/base/parameters_data.yml" in error.fix


def test_values_keep_their_type_or_are_read_as_the_field_says():
    """An int in a float field stays an int (run names and resume keys do not change); text that spells a
    number is read as one; a number given for a label becomes text; lists become tuples."""
    training = TrainingSettings.from_params({"num_train_epochs": 3, "learning_rate": "1e-3",
                                             "lora": {"target_modules": ["q_proj", "v_proj"]}})
    assert training.num_train_epochs == 3 and isinstance(training.num_train_epochs, int)
    assert training.learning_rate == 0.001 and training.lora.target_modules == ("q_proj", "v_proj")
    data = DataSettings.from_params({"label_positive": 1, "label_negative": 0, "columns": {"output": 2},
                                     "train_per_class": "100", "labels": ["a", "b"], "test_per_class": None})
    assert (data.label_positive, data.label_negative) == ("1", "0") and data.columns.output == 2
    assert data.train_per_class == 100 and data.labels == ("a", "b") and data.test_per_class is None
    assert DataSettings.from_params({"columns": {"output": "label"}}).columns.output == "label"
    assert DataSettings.from_params({"qa": None}).qa.group_by == "article"  # null: the defaults
    assert ModelSettings.from_params({"max_length": 256}).max_length == 256
    assert EvaluationSettings.from_params({"max_new_tokens": None}).max_new_tokens is None


def test_training_settings_refuse_a_wrong_type_instead_of_crashing():
    """A string learning rate used to raise TypeError from the range check ('<' between str and int)."""
    with pytest.raises(SettingsError, match=r"training\.learning_rate must be a number, got 'abc'"):
        TrainingSettings.from_params({"learning_rate": "abc"})


def _expand_grid_known_keys() -> set[str]:
    from finetune_predictor.pipelines.sensitivity.grid import expand_grid

    with pytest.raises(ValueError) as info:
        expand_grid({"zz_not_a_key": 1, "train_per_class": [1], "learning_rates": [1e-3]}, "m")
    return set(ast.literal_eval(str(info.value).split("known: ", 1)[1]))


def test_schemas_agree_with_the_code_that_reads_the_groups():
    """Keys the sweep grid, the probes and the predictor accept are the keys their schemas accept."""
    from finetune_predictor.pipelines.sensitivity.runner import EXECUTORS, STRATEGIES
    from finetune_predictor.prediction.learning_curve import AUTO, BASELINES, FAMILIES
    from finetune_predictor.prediction.meta_features import ProbeSettings
    from finetune_predictor.prediction.predictor import PredictorSettings

    assert {f.name for f in dataclasses.fields(SensitivityParams)} == _expand_grid_known_keys()
    assert {f.name for f in dataclasses.fields(ProbeSettings)} | {"cache_dir"} == {
        f.name for f in dataclasses.fields(MetaFeaturesSettings)}
    assert {f.name for f in dataclasses.fields(PredictorSettings)} | {"table_path", "experiment_name",
                                                                      "group_column"} == {
        f.name for f in dataclasses.fields(PredictorParams)}
    fields = {f.name: f for f in dataclasses.fields(SensitivityParams)}
    assert fields["executor"].metadata["choices"]() == tuple(EXECUTORS)
    assert fields["strategy"].metadata["choices"]() == tuple(STRATEGIES)
    curve = {f.name: f for f in dataclasses.fields(GROUPS["forecast"])}["curve_family"]
    assert set(curve.metadata["choices"]()) == set(FAMILIES) | set(BASELINES) | {AUTO}
