"""Multi-class classification: labels from the data, strict parsing, per-class and one-vs-rest metrics,
LIAR's six-way TSV through parameters only, and label scoring over every candidate on a tiny Llama."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finetune_predictor.data import task_data
from finetune_predictor.modeling.evaluation import metrics_of, predict
from finetune_predictor.pipelines.sensitivity.grid import DataVariant, apply_variant
from finetune_predictor.tasks import MulticlassClassificationTask, build_task, declared_labels

LIAR_LABELS = ["barely-true", "false", "half-true", "mostly-true", "pants-fire", "true"]
SIX_WAY = {"task": "multiclass_classification", "format": "tsv", "header": False,
           "columns": {"id": 0, "output": 1, "input": 2}, "instruction": "How true is this statement?",
           "train_per_class": 30, "test_per_class": 30, "seed": 42, "duplicates": "drop", "test_overlap": "drop"}


def test_labels_come_from_the_data_or_the_parameters():
    assert build_task({"task": "multiclass_classification"}, ["b", "a", "c", "a"]).candidates() == ["a", "b", "c"]
    assert build_task({"task": "multiclass_classification", "labels": ["z", "y"]}, ["a"]).candidates() == ["z", "y"]
    assert declared_labels({"task": "multiclass_classification"}) is None
    with pytest.raises(ValueError, match=r"needs data\.labels"):
        build_task({"task": "multiclass_classification"})
    with pytest.raises(ValueError, match="at least two labels"):
        MulticlassClassificationTask(("only",))


def test_parsing_never_reads_half_true_as_true():
    task = MulticlassClassificationTask(tuple(LIAR_LABELS))
    assert task.parse("half-true") == "half-true"
    assert task.parse("Answer: Mostly-True.") == "mostly-true"
    assert task.parse("I think this is half-true") == "half-true"
    assert task.parse("true") == "true"
    assert task.parse("either true or false") is None  # two labels: a parse failure, never a guess
    assert task.parse("no idea") is None


def test_metrics_per_class_and_one_vs_rest_auc():
    task = MulticlassClassificationTask(("a", "b", "c"))
    truth = ["a", "b", "c", "a", "b", "c"]
    scores = np.array([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8], [.6, .3, .1], [.3, .6, .1], [.2, .2, .6]])
    metrics = task.metrics(truth, ["a", "b", "c", "a", None, "b"], scores)
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["parse_failures"] == 1
    assert metrics["auc"] == pytest.approx(1.0) and metrics["support_a"] == 2
    assert metrics["confusion_matrix"][2] == [0, 1, 1]


def test_label_noise_flips_to_another_label_and_class_share_is_refused():
    labels = ["a", "b", "c"]
    train = pd.DataFrame({"id": [f"r{i}" for i in range(30)], "instruction": "Q", "input": [f"t{i}" for i in range(30)],
                          "output": labels * 10, "source": "s", "group": "g"})
    noisy = apply_variant(train, DataVariant("n", label_noise=0.2), MulticlassClassificationTask(tuple(labels)), seed=1)
    changed = noisy["output"] != train["output"]
    assert changed.sum() == 6 and set(noisy["output"]) <= set(labels)
    with pytest.raises(ValueError, match="positive_share applies to two labels"):
        apply_variant(train, DataVariant("s", positive_share=0.8), MulticlassClassificationTask(tuple(labels)), seed=1,
                      pool=train)


def test_liar_six_way_tsv_through_parameters_only(liar_dir):
    data = {**SIX_WAY, "path": str(liar_dir / "train.tsv"), "test_path": str(liar_dir / "test.tsv")}
    records, _rejects, read = task_data.load_task_records(data)
    train, test, summary = task_data.split_train_test(records, read, data)
    assert sorted(summary["train_label_counts"]) == LIAR_LABELS
    assert set(summary["train_label_counts"].values()) == {30} and set(summary["test_label_counts"].values()) == {30}
    assert not set(train["input"]) & set(test["input"])
    assert train["instruction"].eq("How true is this statement?").all()


def test_label_scoring_over_every_candidate_on_a_tiny_llama(tiny_session):
    labels = ["pants-fire", "false", "true"]
    test = pd.DataFrame({"id": [f"r{i}" for i in range(6)], "instruction": "How true is this statement?",
                         "input": [f"statement number {i}" for i in range(6)], "output": labels * 2,
                         "source": "s", "group": "g"})
    task = build_task({"task": "multiclass_classification"}, test["output"])
    predictions = predict(test, task, tiny_session.with_purpose("evaluate"), {"batch_size": 4,
                                                                              "generation": True,
                                                                              "max_new_tokens": 3,
                                                                              "engine": "hf"})
    probabilities = predictions[[f"prob_{key}" for key in ("false", "pants_fire", "true")]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    metrics = metrics_of(predictions, task)
    assert {"accuracy", "f1_macro", "auc", "parse_failure_rate", "predicted_share_pants_fire"} <= set(metrics)
    assert metrics["primary"] == metrics["accuracy"]  # logged as baseline_primary / finetuned_primary
    assert 0.0 <= metrics["auc"] <= 1.0
