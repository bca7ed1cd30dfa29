"""The predict pipeline: the candidate's meta-features (with probes), then the saved predictor."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.predict.nodes import predict_candidate


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(predict_candidate,
             ["meta_features.reporting.features", "predictor.model_input.runs_table", "predictor.model.card",
              "params:model", "params:training", "params:data"],
             "predict.reporting.prediction", name="predict_candidate"),
    ], namespace="predict", prefix_datasets_with_namespace=False)
