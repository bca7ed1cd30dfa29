"""The data_engineering pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.data_engineering.nodes import load_task_records, split_train_test


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(load_task_records, "params:data", "data_engineering.int.records", name="load_task_records"),
        node(
            split_train_test,
            ["data_engineering.int.records", "params:data"],
            ["data_engineering.prm.train_set", "data_engineering.prm.test_set",
             "data_engineering.reporting.split_summary"],
            name="split_train_test",
        ),
    ])
