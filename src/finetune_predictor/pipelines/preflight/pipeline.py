"""The preflight pipeline: a verdict table saved first, then enforced."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.preflight.nodes import check_run, enforce_verdict

GATE = "preflight.int.passed"


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(check_run, ["params:data", "params:model", "params:model_registry", "params:training", "params:preflight",
                         "parameters"],
             "preflight.reporting.verdict", name="check_run"),
        node(enforce_verdict, "preflight.reporting.verdict", GATE, name="enforce_verdict"),
    ], namespace="preflight", prefix_datasets_with_namespace=False)
