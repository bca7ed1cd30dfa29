"""The meta_features pipeline: the predictor's columns for one candidate, without the full fine-tune."""

from finetune_predictor.pipelines.meta_features.pipeline import create_pipeline

__all__ = ["create_pipeline"]
