"""The sensitivity pipeline: preflight, the sweep's catalogued data, the sweep, then its report."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.preflight.pipeline import GATE
from finetune_predictor.pipelines.sensitivity import nodes

RESULTS = "sensitivity.reporting.experiment_summary"
DATA = ["sensitivity.prm.train_subsets", "sensitivity.prm.test_set", "sensitivity.prm.validation_set",
        "sensitivity.prm.variant_pool", "sensitivity.reporting.split_summary"]


def create_pipeline(**kwargs: object) -> Pipeline:
    plots = [("accuracy_vs_size", nodes.plot_accuracy_vs_size),
             ("accuracy_vs_learning_rate", nodes.plot_accuracy_vs_learning_rate),
             ("accuracy_vs_lora_r", nodes.plot_accuracy_vs_lora_r),
             ("model_size_heatmap", nodes.plot_model_size_heatmap)]
    return Pipeline([
        node(nodes.prepare_sweep_data, ["params:sensitivity", "params:data", GATE], DATA, name="prepare_sweep_data"),
        node(nodes.run_sensitivity_sweep,
             [*DATA, "params:sensitivity", "params:data", "params:model", "params:model_registry",
              "params:training", "params:evaluation"],
             [RESULTS, f"{RESULTS}_csv", "sensitivity.reporting.sweep_status"], name="run_sensitivity_sweep",
             tags="gpu"),
        node(nodes.analyse_sweep, RESULTS, "sensitivity.reporting.analysis", name="analyse_sweep", tags="reporting"),
        *[node(function, RESULTS, f"sensitivity.reporting.{name}_plot", name=f"plot_{name}", tags="reporting")
          for name, function in plots],
        node(nodes.write_reports, [RESULTS, "sensitivity.reporting.analysis", "sensitivity.reporting.sweep_status"],
             ["sensitivity.reporting.report_markdown", "sensitivity.reporting.report_latex"], name="write_reports",
             tags="reporting"),
    ], namespace="sensitivity", prefix_datasets_with_namespace=False)
