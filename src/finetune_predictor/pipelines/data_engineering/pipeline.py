"""The data_engineering pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.data_engineering.nodes import (
    load_task_records,
    load_task_records_after_preflight,
    split_train_test,
)


def create_pipeline(after_preflight: bool = False, **kwargs: object) -> Pipeline:
    """``after_preflight=True`` makes reading the data wait for the preflight gate (as in mini_test100)."""
    inputs = ["params:data", "preflight.int.passed"] if after_preflight else "params:data"
    return Pipeline([
        node(load_task_records_after_preflight if after_preflight else load_task_records, inputs,
             ["data_engineering.int.records", "data_engineering.reporting.rejects",
              "data_engineering.int.read_summary"], name="load_task_records"),
        node(
            split_train_test,
            ["data_engineering.int.records", "data_engineering.int.read_summary", "params:data"],
            ["data_engineering.prm.train_set", "data_engineering.prm.test_set",
             "data_engineering.reporting.split_summary"],
            name="split_train_test",
        ),
    ], namespace="data_engineering", prefix_datasets_with_namespace=False)
