"""sft_training, evaluation and meta_features run by Kedro's SequentialRunner on a tiny Llama."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.data.synthetic_events import iter_events
from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.pipelines import evaluation, meta_features, sft_training

DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"}


def _frame(n: int, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(list(iter_articles(n, seed=seed)))
    frame["source"], frame["group"] = "s", "g"
    return frame


def _catalog(tiny_model_dir, pipeline, data=DATA, train=None, test=None, **extra) -> DataCatalog:
    catalog = DataCatalog({
        "params:model": MemoryDataset({"name": str(tiny_model_dir), "max_length": 256}),
        "params:model_registry": MemoryDataset({}),
        "params:training": MemoryDataset({"max_steps": 2, "per_device_train_batch_size": 4, "precision": "fp32",
                                          "learning_rate": 1e-2, "warmup_ratio": 0.0}),
        "params:training.precision": MemoryDataset("fp32"),
        "params:data": MemoryDataset(data),
        "params:evaluation": MemoryDataset({"batch_size": 8, "generation": True, "max_new_tokens": 3,
                                            "engine": "hf"}),
        "params:meta_features": MemoryDataset({"sample_size": 8, "probe_steps": 2, "knn": 3, "cache": False}),
        "data_engineering.prm.train_set": MemoryDataset(_frame(8, 1) if train is None else train),
        "data_engineering.prm.test_set": MemoryDataset(_frame(6, 2) if test is None else test),
        "data_engineering.reporting.split_summary": MemoryDataset({
            "source": "bundled-synthetic-news", "test_source": "t", "train_size": 8, "test_size": 6,
            "train_sha256": "a" * 64, "test_sha256": "b" * 64}),
        **{name: MemoryDataset(value) for name, value in extra.items()},
    })
    for name in pipeline.outputs():
        if name not in catalog:
            catalog[name] = MemoryDataset()
    return catalog


def test_sft_training_and_evaluation_pipelines(tiny_model_dir, tmp_path):
    training = sft_training.create_pipeline()
    catalog = _catalog(tiny_model_dir, training)
    SequentialRunner().run(training, catalog)
    files = catalog.load("sft_training.model.adapter")
    summary = catalog.load("sft_training.reporting.training_summary")
    # The adapter travels with its manifest (sha256 at save), which evaluation verifies before loading.
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json", "manifest.json"}
    assert summary["num_steps"] == 2
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    for name, content in files.items():
        (adapter_dir / name).write_bytes(content)

    evaluating = evaluation.create_pipeline()
    catalog = _catalog(tiny_model_dir, evaluating, **{"sft_training.model.adapter": str(adapter_dir),
                                                      "sft_training.reporting.training_summary": summary})
    SequentialRunner().run(evaluating, catalog)
    table = catalog.load("evaluation.reporting.comparison_table").set_index("metric")
    assert table.loc["n", "baseline"] == table.loc["n", "finetuned"] == table.loc["n", "classical"] == 6
    assert 0 <= table.loc["accuracy", "classical"] <= 1  # the TF-IDF classifier beside the fine-tune
    record = catalog.load("evaluation.tracking.run_record")
    params = record.params
    assert params["train_size"] == 8 and params["adapter_sha256"] == summary["adapter_sha256"][
        "adapter_model.safetensors"]
    # What the model session actually ran with is on the record.
    assert (params["precision"], params["quantization_requested"], params["quantization_actual"],
            params["engine"]) == ("fp32", "none", "none", "hf")
    assert params["replicate_key"] == record.replicate_key and "seed=42" in record.name
    assert {"classical_accuracy", "classical_f1_macro", "classical_auc", "finetuned_predicted_share_fake",
            "baseline_predicted_share_legitimate"} <= set(record.metrics)
    assert params["records_truncated"] == 0 and params["dataset_family"] is None  # the summary here has none


def test_meta_features_pipeline(tiny_model_dir):
    pipeline = meta_features.create_pipeline()
    catalog = _catalog(tiny_model_dir, pipeline)
    SequentialRunner().run(pipeline, catalog)
    features = catalog.load("meta_features.reporting.features")
    assert features["mf_size"] == 8 and features["mf_probe_steps"] == 2
    assert set(catalog.load("meta_features.tracking.metrics")) <= set(features)



def _qa_frame(n: int, start: int) -> pd.DataFrame:
    rows = [{"id": f"q{i}", "instruction": "Answer with a span of the context.",
             "input": f"Question: Who founded town {i}?\n\nContext: Town {i} was founded by Ana{i} in {1800 + i}.",
             "output": f"Ana{i}", "source": "s", "group": f"article{i % 3}",
             "references": json.dumps([f"Ana{i}", f"by Ana{i}"])} for i in range(start, start + n)]
    return pd.DataFrame(rows)


def _events_frame(n: int, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(list(iter_events(n, seed)))
    frame["source"], frame["group"], frame["references"] = "s", "g", ""
    return frame


@pytest.mark.parametrize("task", ["qa", "structured"])
def test_open_tasks_through_training_and_evaluation(tiny_model_dir, tmp_path, task):
    """QA and structured answers go through the same training and evaluation pipelines: generation is the
    judged view, the task's metrics are logged under stable names, and the primary metric is set."""
    data = {"task": task}
    train, test = (_qa_frame(8, 0), _qa_frame(6, 100)) if task == "qa" else (_events_frame(8, 1), _events_frame(6, 2))
    training = sft_training.create_pipeline()
    catalog = _catalog(tiny_model_dir, training, data=data, train=train, test=test)
    SequentialRunner().run(training, catalog)
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    for name, content in catalog.load("sft_training.model.adapter").items():
        (adapter_dir / name).write_bytes(content)
    evaluating = evaluation.create_pipeline()
    catalog = _catalog(tiny_model_dir, evaluating, data=data, train=train, test=test,
                       **{"sft_training.model.adapter": str(adapter_dir),
                          "sft_training.reporting.training_summary": catalog.load(
                              "sft_training.reporting.training_summary")})
    SequentialRunner().run(evaluating, catalog)
    record = catalog.load("evaluation.tracking.run_record")
    expected = ({"finetuned_exact_match", "finetuned_f1"} if task == "qa"
                else {"finetuned_parse_rate", "finetuned_field_accuracy", "finetuned_schema_compliance"})
    assert expected | {"baseline_primary", "finetuned_primary", "classical_primary", "primary_gain"} <= set(
        record.metrics)
    # Judged on generation only: no label-scoring metric, no generation-view prefix.
    assert record.params["task"] == task and "accuracy_gain" not in record.metrics
    assert not any(key.startswith(("finetuned_gen_", "finetuned_auc", "finetuned_accuracy")) for key in record.metrics)


def test_comparison_table_is_rounded_for_people():
    from finetune_predictor.pipelines.evaluation.nodes import comparison_table

    table = comparison_table({"baseline": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.8}, "classical": {}})
    assert table.loc[0, "delta"] == 0.3  # not 0.30000000000000004
