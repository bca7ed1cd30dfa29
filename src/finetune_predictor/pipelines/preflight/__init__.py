"""The preflight pipeline: fail fast, before any training starts."""

from finetune_predictor.pipelines.preflight.pipeline import create_pipeline

__all__ = ["create_pipeline"]
