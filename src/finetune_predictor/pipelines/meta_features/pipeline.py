"""The meta_features pipeline: preflight, the data split, then the features of this candidate."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.meta_features.nodes import compute_candidate_features


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(compute_candidate_features,
             ["data_engineering.prm.train_set", "params:model", "params:model_registry", "params:training",
              "params:data", "params:meta_features"],
             ["meta_features.reporting.features", "meta_features.tracking.metrics"],
             name="compute_candidate_features", tags="gpu"),
    ], namespace="meta_features", prefix_datasets_with_namespace=False)
