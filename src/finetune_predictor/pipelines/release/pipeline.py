"""The release pipeline: source run -> disk plan -> merge -> GGUF export -> evaluation -> table, card, MLflow."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.release import nodes

SOURCE, TEST, PLAN = "release.int.source_run", "release.prm.test_set", "release.int.release_plan"
MERGED, VARIANTS = "release.model.merged_model", "release.model.variants"
RESULTS = "release.model_output.variant_results"
TABLE, PLOT = "release.reporting.release_table", "release.reporting.release_plot"


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(nodes.find_source_run, "params:release",
             [SOURCE, TEST, "release.model_output.adapter_predictions"], name="find_source_run"),
        node(nodes.plan_release, [SOURCE, "params:release", "params:model_registry"], PLAN, name="plan_release"),
        node(nodes.merge_model, [SOURCE, TEST, PLAN, "params:release", "params:model_registry"], MERGED,
             name="merge_model", tags="gpu"),
        node(nodes.export_variants, [SOURCE, MERGED, PLAN], VARIANTS, name="export_variants"),
        node(nodes.evaluate_variants, [SOURCE, TEST, VARIANTS, PLAN, "params:release", "params:model_registry"],
             RESULTS, name="evaluate_variants", tags="gpu"),
        node(nodes.variant_predictions, RESULTS, "release.model_output.predictions", name="variant_predictions"),
        node(nodes.release_table,
             [SOURCE, TEST, "release.model_output.adapter_predictions", VARIANTS, RESULTS, "params:release"], TABLE,
             name="release_table", tags="reporting"),
        node(nodes.plot_release, TABLE, PLOT, name="plot_release", tags="reporting"),
        node(nodes.write_release, [SOURCE, PLAN, MERGED, VARIANTS, RESULTS, TABLE],
             ["release.reporting.model_card", "release.reporting.checksums", "release.reporting.release_summary"],
             name="write_release", tags="reporting"),
        node(nodes.log_release, [SOURCE, PLAN, TABLE, "release.reporting.release_summary", "params:release"],
             "release.tracking.metrics", name="log_release"),
    ], namespace="release", prefix_datasets_with_namespace=False)
