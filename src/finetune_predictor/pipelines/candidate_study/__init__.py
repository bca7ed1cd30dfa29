"""The candidate_study pipeline: rank fully trained candidate training sets from meta-features only."""

from finetune_predictor.pipelines.candidate_study.pipeline import create_pipeline

__all__ = ["create_pipeline"]
