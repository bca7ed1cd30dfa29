"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from finetune_predictor.pipelines import data_engineering, evaluation, sft_training


def register_pipelines() -> dict[str, Pipeline]:
    """``data_engineering``, ``sft_training`` and ``evaluation`` alone, and composed as ``mini_test100``."""
    pipelines = {
        "data_engineering": data_engineering.create_pipeline(),
        "sft_training": sft_training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    pipelines["mini_test100"] = sum(pipelines.values(), Pipeline([]))
    pipelines["__default__"] = pipelines["mini_test100"]
    return pipelines
