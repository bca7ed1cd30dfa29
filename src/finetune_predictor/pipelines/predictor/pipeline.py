"""The predictor pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.predictor import nodes

TABLE = "predictor.model_input.runs_table"


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(nodes.load_runs_table, ["archive_runs.raw.runs_archive", "params:predictor"], TABLE,
             name="load_runs_table"),
        node(nodes.evaluate_predictor, [TABLE, "params:predictor"],
             ["predictor.reporting.evaluation", "predictor.reporting.shap", "predictor.tracking.metrics",
              "predictor.reporting.report"], name="evaluate_predictor"),
        node(nodes.train_predictor, [TABLE, "params:predictor"], "predictor.model.card", name="train_predictor"),
        node(nodes.plot_shap_bar, "predictor.reporting.shap", "predictor.reporting.shap_bar_plot",
             name="plot_shap_bar", tags="reporting"),
        node(nodes.plot_shap_beeswarm, [TABLE, "predictor.model.card"],
             "predictor.reporting.shap_beeswarm_plot", name="plot_shap_beeswarm", tags="reporting"),
    ], namespace="predictor", prefix_datasets_with_namespace=False)
