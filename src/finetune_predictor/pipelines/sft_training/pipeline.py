"""The sft_training pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.sft_training.nodes import train_adapter


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(
            train_adapter,
            ["data_engineering.prm.train_set", "data_engineering.prm.test_set", "params:model",
             "params:model_registry", "params:training", "params:data"],
            ["sft_training.model.adapter", "sft_training.reporting.training_summary"],
            name="train_adapter", tags="gpu",
        ),
    ], namespace="sft_training", prefix_datasets_with_namespace=False)
