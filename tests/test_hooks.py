"""A run reads back the versions it saved, even when another run saved a newer one in between."""

from __future__ import annotations

import pandas as pd
from kedro.io import DataCatalog
from kedro.io.core import Version
from kedro_datasets.pandas import CSVDataset

from finetune_predictor.hooks import ReadOwnWritesHooks


def _summary(path, save_version: str) -> CSVDataset:
    return CSVDataset(filepath=str(path), version=Version(None, save_version))


def test_a_run_loads_its_own_version_not_a_concurrent_newer_one(tmp_path):
    path = tmp_path / "experiment_summary.csv"
    ours, theirs = _summary(path, "2026-01-01T00.00.00.001Z"), _summary(path, "2026-01-01T00.00.00.002Z")
    hooks = ReadOwnWritesHooks()
    hooks.after_catalog_created(DataCatalog({"sensitivity.reporting.experiment_summary": ours}))

    ours.save(pd.DataFrame({"dataset": ["bundled"]}))
    hooks.after_dataset_saved("sensitivity.reporting.experiment_summary")
    theirs.save(pd.DataFrame({"dataset": ["liar"]}))  # a second `kedro run`, started a millisecond later

    assert ours.load()["dataset"].tolist() == ["bundled"]
    # Without the hook Kedro resolves "latest": the other run's file.
    assert _summary(path, "2026-01-01T00.00.00.003Z").load()["dataset"].tolist() == ["liar"]


def test_unversioned_and_unknown_datasets_are_left_alone(tmp_path):
    plain = CSVDataset(filepath=str(tmp_path / "plain.csv"))
    hooks = ReadOwnWritesHooks()
    hooks.after_dataset_saved("anything")  # before any catalog: nothing to do
    hooks.after_catalog_created(DataCatalog({"plain": plain}))
    plain.save(pd.DataFrame({"a": [1]}))
    hooks.after_dataset_saved("plain")
    hooks.after_dataset_saved("not.in.catalog")
    assert plain.load()["a"].tolist() == [1]


def test_headline_says_the_result_first():
    from finetune_predictor.evaluation import headline

    metrics = {"baseline": {"accuracy": 0.5, "primary": 0.5, "auc": 0.514},
               "finetuned": {"accuracy": 0.8, "primary": 0.8, "auc": 0.888}, "classical": {"primary": 0.77}}
    assert headline(metrics, 780) == ("accuracy: baseline 50.0% -> fine-tuned 80.0% (+30.0 points), AUC 0.51 -> 0.89, "
                                      "classical 77.0%, 13.0 min")
    qa = {"baseline": {"f1": 0.1, "primary": 0.1}, "finetuned": {"f1": 0.45, "exact_match": 0.3, "primary": 0.45}}
    assert headline(qa).startswith("f1: baseline 10.0% -> fine-tuned 45.0% (+35.0 points)")
