"""The predict pipeline: a new candidate's accuracy, interval and reasons, without training it."""

from finetune_predictor.pipelines.predict.pipeline import create_pipeline

__all__ = ["create_pipeline"]
