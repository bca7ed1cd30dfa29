"""The rank_datasets pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.rank_datasets import nodes

FEATURES = "rank_datasets.feature.candidate_features"
METHOD = "rank_datasets.int.ranking_method"
# Optional views of the predictor's outputs (None before `kedro run --pipeline=predictor`; then the prior ranks).
CARD, RUNS_TABLE = "predictor.model.card_if_saved", "predictor.model_input.runs_table_if_saved"


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(nodes.ranking_method, [CARD, RUNS_TABLE, "params:data"], METHOD, name="ranking_method"),
        node(nodes.candidate_features,
             ["params:rank", "params:data", "params:model", "params:model_registry", "params:training",
              "params:meta_features", METHOD, "preflight.int.passed"], FEATURES, name="candidate_features",
             tags="gpu"),
        node(nodes.rank_candidates, [FEATURES, RUNS_TABLE, CARD, "params:rank"],
             ["rank_datasets.reporting.ranking", "rank_datasets.tracking.metrics"], name="rank_candidates"),
        node(nodes.plot_ranking, "rank_datasets.reporting.ranking", "rank_datasets.reporting.ranking_plot",
             name="plot_ranking", tags="reporting"),
    ], namespace="rank_datasets", prefix_datasets_with_namespace=False)
