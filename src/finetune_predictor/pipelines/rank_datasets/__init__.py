"""Rank candidate training sets before training any: validate each, measure its meta-features with the same
model and configuration, and let the saved predictor rank them with intervals and reasons."""

from finetune_predictor.pipelines.rank_datasets.pipeline import create_pipeline

__all__ = ["create_pipeline"]
