"""Data engineering: the task's records, one fixed held-out test set and a balanced training subset."""

from finetune_predictor.pipelines.data_engineering.pipeline import create_pipeline

__all__ = ["create_pipeline"]
