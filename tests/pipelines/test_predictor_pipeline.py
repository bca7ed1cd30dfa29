"""The predictor pipeline run by Kedro's SequentialRunner on an external runs table (the CSV path)."""

from __future__ import annotations

import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.pipelines import predict
from finetune_predictor.pipelines.predictor import create_pipeline
from tests.test_predictor import synthetic_runs


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so intermediate outputs can be checked after the run."""

    def _release(self) -> None:
        pass


def test_predictor_pipeline_on_an_external_table(tmp_path):
    table = synthetic_runs(60).rename(columns={"finetuned_primary": "accuracy", "dataset_family": "family"})
    table.loc[0, [c for c in table if c.startswith("mf_")]] = float("nan")  # a run logged without features
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    pipeline = create_pipeline()
    catalog = DataCatalog({"archive_runs.raw.runs_archive": MemoryDataset(pd.DataFrame()),
                           "params:predictor": MemoryDataset({
        "table_path": str(path), "target_column": "accuracy", "group_column": "family", "n_folds": 4,
        "min_runs": 30, "candidates": ["lightgbm_shap", "ridge_cv", "stacked"],
        "lightgbm": {"n_estimators": 80, "num_leaves": 7, "min_child_samples": 5, "verbose": -1}})})
    for name in pipeline.all_outputs():
        catalog[name] = KeptDataset()
    SequentialRunner().run(pipeline, catalog)

    assert len(catalog.load("predictor.model_input.runs_table")) == 59
    metrics = {key: value["value"] for key, value in catalog.load("predictor.tracking.metrics").items()}
    for name in ("rmse_random", "rmse_grouped", "mae_grouped", "spearman_grouped", "within3_random",
                 "within3_grouped", "interval_coverage_grouped", "baseline_mean_rmse_grouped",
                 "baseline_ridge_rmse_grouped", "baseline_early_stopping_rmse_grouped",
                 "baseline_best_single_feature_rmse_grouped"):
        assert name in metrics, name
    assert metrics["rmse_grouped"] < metrics["baseline_mean_rmse_grouped"]
    card = catalog.load("predictor.model.card")
    assert card["inner_cv_rmse"][card["model"]] <= card["selection_threshold"]
    assert "selected_rmse_random" not in metrics and "lightgbm_shap_rmse_random" in metrics
    assert "Runs: 59" in catalog.load("predictor.reporting.report")

    # The saved model and card drive the predict pipeline's last node for a new candidate.
    candidate = table.iloc[5]
    features = {c: float(candidate[c]) for c in table if c.startswith("mf_")}
    predict_catalog = DataCatalog({
        "meta_features.reporting.features": MemoryDataset(features),
        "predictor.model_input.runs_table": MemoryDataset(catalog.load("predictor.model_input.runs_table")),
        "predictor.model.card": MemoryDataset(card), "params:model": MemoryDataset({"name": "m1"}),
        "params:training": MemoryDataset({"learning_rate": 1e-3}), "params:data": MemoryDataset({}),
        "predict.reporting.prediction": KeptDataset()})
    SequentialRunner().run(predict.create_pipeline(), predict_catalog)
    answer = predict_catalog.load("predict.reporting.prediction")
    assert answer["interval"][0] < answer["predicted"] < answer["interval"][1]
    assert abs(answer["predicted"] - candidate["accuracy"]) < 0.1
    assert answer["reasons"] and answer["candidate"]["model"] == "m1"
