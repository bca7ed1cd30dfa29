"""Evaluation: baseline and fine-tuned on the same fixed test set, metrics, plots and the MLflow run record."""

from finetune_predictor.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
