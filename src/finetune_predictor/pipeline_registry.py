"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from finetune_predictor.pipelines import (
    archive_runs,
    candidate_study,
    data_engineering,
    evaluation,
    forecast,
    meta_features,
    predict,
    predictor,
    preflight,
    rank_datasets,
    release,
    sensitivity,
    sft_training,
)


def register_pipelines() -> dict[str, Pipeline]:
    """Each pipeline alone, and ``mini_test100`` = preflight, then data, training and evaluation."""
    pipelines = {
        "preflight": preflight.create_pipeline(),
        "data_engineering": data_engineering.create_pipeline(),
        "sft_training": sft_training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    pipelines["mini_test100"] = (pipelines["preflight"] + data_engineering.create_pipeline(after_preflight=True)
                                 + pipelines["sft_training"] + pipelines["evaluation"])
    pipelines["sensitivity"] = pipelines["preflight"] + sensitivity.create_pipeline()
    pipelines["meta_features"] = (pipelines["preflight"] + data_engineering.create_pipeline(after_preflight=True)
                                  + meta_features.create_pipeline())
    pipelines["predictor"] = predictor.create_pipeline()
    pipelines["forecast"] = forecast.create_pipeline()
    pipelines["rank_datasets"] = pipelines["preflight"] + rank_datasets.create_pipeline()
    pipelines["candidate_study"] = candidate_study.create_pipeline()
    pipelines["archive_runs"] = archive_runs.create_pipeline()
    pipelines["predict"] = pipelines["meta_features"] + predict.create_pipeline()
    pipelines["release"] = release.create_pipeline()
    pipelines["__default__"] = pipelines["mini_test100"]
    return pipelines
