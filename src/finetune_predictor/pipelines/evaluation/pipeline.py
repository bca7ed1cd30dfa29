"""The evaluation pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.evaluation import nodes


def create_pipeline(**kwargs: object) -> Pipeline:
    test = "data_engineering.prm.test_set"
    return Pipeline([
        node(nodes.predict_baseline,
             [test, "params:model", "params:model_registry", "params:training.precision", "params:evaluation",
              "params:data"],
             ["evaluation.model_output.baseline_predictions", "evaluation.tracking.baseline_provenance"],
             name="predict_baseline", tags="gpu"),
        node(nodes.predict_finetuned,
             [test, "sft_training.model.adapter", "params:model", "params:model_registry", "params:training.precision",
              "params:evaluation", "params:data"],
             "evaluation.model_output.finetuned_predictions", name="predict_finetuned", tags="gpu"),
        node(nodes.score_classical_baseline, ["data_engineering.prm.train_set", test, "params:data"],
             "evaluation.reporting.classical_metrics", name="score_classical_baseline"),
        node(nodes.compute_metrics,
             ["evaluation.model_output.baseline_predictions", "evaluation.model_output.finetuned_predictions",
              "evaluation.reporting.classical_metrics", "data_engineering.prm.train_set", "params:data"],
             "evaluation.reporting.metrics", name="compute_metrics"),
        node(nodes.comparison_table, "evaluation.reporting.metrics", "evaluation.reporting.comparison_table",
             name="comparison_table", tags="reporting"),
        node(nodes.plot_confusion_matrices, "evaluation.reporting.metrics",
             "evaluation.reporting.confusion_matrices_plot", name="plot_confusion_matrices", tags="reporting"),
        node(nodes.plot_training_loss, "sft_training.reporting.training_summary",
             "evaluation.reporting.training_loss_plot", name="plot_training_loss", tags="reporting"),
        node(nodes.plot_metric_comparison, "evaluation.reporting.metrics",
             "evaluation.reporting.metric_comparison_plot", name="plot_metric_comparison", tags="reporting"),
        node(nodes.build_run_record,
             ["data_engineering.reporting.split_summary", "sft_training.reporting.training_summary",
              "evaluation.reporting.metrics", "params:model", "params:training", "params:data",
              "evaluation.tracking.baseline_provenance"],
             "evaluation.tracking.run_record", name="build_run_record"),
    ], namespace="evaluation", prefix_datasets_with_namespace=False)
