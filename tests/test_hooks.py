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
