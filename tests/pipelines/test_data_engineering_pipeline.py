"""The data_engineering pipeline run by Kedro's SequentialRunner on a small bundled corpus."""

from __future__ import annotations

from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.pipelines.data_engineering import create_pipeline


def test_data_engineering_pipeline_runs():
    data = {"task": "binary_classification", "path": None, "test_path": None, "label_positive": "fake",
            "label_negative": "legitimate", "train_per_class": 15, "test_per_class": 10, "seed": 3,
            "synthetic": {"num_records": 300, "seed": 7}}
    catalog = DataCatalog({"params:data": MemoryDataset(data)})
    for name in ("data_engineering.int.records", "data_engineering.int.read_summary",
                 "data_engineering.reporting.rejects", "data_engineering.prm.train_set",
                 "data_engineering.prm.test_set", "data_engineering.reporting.split_summary"):
        catalog[name] = MemoryDataset()
    SequentialRunner().run(create_pipeline(), catalog)
    train = catalog.load("data_engineering.prm.train_set")
    summary = catalog.load("data_engineering.reporting.split_summary")
    assert len(train) == 30
    assert summary["test_size"] == 20
    assert summary["train_label_counts"] == {"fake": 15, "legitimate": 15}
    assert len(summary["test_sha256"]) == 64
