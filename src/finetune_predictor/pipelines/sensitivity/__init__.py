"""The sensitivity pipeline: sweeps over data size, hyperparameters, base models and data quality."""

from finetune_predictor.pipelines.sensitivity.pipeline import create_pipeline

__all__ = ["create_pipeline"]
