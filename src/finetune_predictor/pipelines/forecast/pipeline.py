"""The forecast pipeline."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.forecast import nodes

RUNS = "forecast.model_input.runs_table"


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(nodes.load_runs, "params:forecast", RUNS, name="load_forecast_runs"),
        node(nodes.evaluate_forward_in_size, [RUNS, "params:forecast"],
             ["forecast.reporting.forward_in_size", "forecast.tracking.metrics"], name="evaluate_forward_in_size"),
        node(nodes.forecast_sweep_sizes, [RUNS, "params:forecast", "params:sensitivity", "params:data"],
             "forecast.reporting.forecasts", name="forecast_sweep_sizes"),
    ], namespace="forecast", prefix_datasets_with_namespace=False)
