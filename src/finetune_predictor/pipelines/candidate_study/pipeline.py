"""The candidate_study pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.candidate_study import nodes

TABLE = "candidate_study.model_input.runs_table"
RANKING = "candidate_study.reporting.ranking"


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(nodes.load_study_table, ["params:candidate_study", "params:predictor"], TABLE, name="load_study_table"),
        node(nodes.score_study, [TABLE, "sensitivity.reporting.split_summary_if_saved", "params:candidate_study",
                                 "params:predictor", "params:rank"],
             [RANKING, "candidate_study.tracking.metrics", "candidate_study.reporting.report"], name="score_study"),
        node(nodes.plot_study, RANKING, "candidate_study.reporting.plot", name="plot_study", tags=["reporting"]),
    ], namespace="candidate_study", prefix_datasets_with_namespace=False)
