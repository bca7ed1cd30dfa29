"""Nodes of the predictor pipeline."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor import tracking
from finetune_predictor.errors import UserFacingError
from finetune_predictor.prediction import predictor as core
from finetune_predictor.prediction.model_selection import contributions


def load_runs_table(predictor: dict[str, Any]) -> pd.DataFrame:
    """FINISHED runs from MLflow (``predictor.experiment_name``) or an external CSV (``predictor.table_path``)."""
    settings = core.PredictorSettings.from_params(predictor)
    if predictor.get("table_path"):
        table = pd.read_csv(predictor["table_path"])
        if settings.target_column not in table:
            raise UserFacingError(f"{predictor['table_path']}: no target column {settings.target_column!r}; "
                                  f"columns: {list(table.columns)}", "predictor.target_column",
                                  "name one of the table's columns")
    else:
        table = tracking.runs_table(str(predictor.get("experiment_name") or tracking.EXPERIMENT_NAME))
    if table.empty:
        raise UserFacingError("the runs table is empty", "predictor.experiment_name, predictor.table_path",
                              "run sweeps with sensitivity.meta_features set first (kedro run "
                              "--pipeline=sensitivity), or pass predictor.table_path")
    table = table[table[settings.target_column].notna()].reset_index(drop=True)
    return core.runs_with_features(table, settings)


def evaluate_predictor(table: pd.DataFrame, predictor: dict[str, Any]) -> tuple[
        pd.DataFrame, dict[str, Any], dict[str, Any], str]:
    """Predictor and baselines on random and grouped splits: the table, SHAP info, MLflow metrics, a report."""
    settings = core.PredictorSettings.from_params(predictor)
    results, shap_info = core.evaluate(table, settings)
    floor = core.noise_floor(table, settings)
    named = core.metrics_for_mlflow(results, settings) | {f"noise_floor_{key}": value for key, value in floor.items()}
    metrics = {key: {"value": value, "step": 0} for key, value in named.items() if value == value}
    note = core.honesty_note(results, len(table), settings, floor)
    report = "\n".join(["# Predictor evaluation", "", f"Runs: {len(table)}. Target: {settings.target_column}. "
                        "Errors in points of the target metric.", "", note, "",
                        _markdown_table(results.round(3)), "",
                        f"SHAP rank stability across folds (mean Spearman): {shap_info['rank_stability']:.2f}", ""])
    print("\n" + report)
    return results, core.to_json(shap_info), metrics, report


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def train_predictor(table: pd.DataFrame, predictor: dict[str, Any]) -> dict[str, Any]:
    """The model chosen on every run (candidates and baselines compared by cross-validation), described by a
    JSON card: the winner, every candidate's inner CV RMSE, the conformal widths, the table's fingerprint."""
    card = core.train_final(table, core.PredictorSettings.from_params(predictor))
    print(f"\nShipped predictor: {card['model']} (inner CV RMSE "
          f"{card['inner_cv_rmse'].get(card['model'], float('nan')):.2f} points; "
          + ", ".join(f"{name} {rmse:.2f}" for name, rmse in sorted(card["inner_cv_rmse"].items(),
                                                                    key=lambda item: item[1])) + ")")
    return core.to_json(card)


def plot_shap_bar(shap_info: dict[str, Any]) -> Figure:
    ranking = pd.Series(shap_info["mean_abs_shap"]).sort_values().tail(20)
    figure, axis = plt.subplots(figsize=(6, 0.3 * len(ranking) + 1.2))
    axis.barh(ranking.index, ranking.to_numpy())
    axis.set_xlabel("mean |SHAP| of the SHAP-filtered LightGBM, averaged over folds")
    axis.set_title("Feature importance")
    figure.tight_layout()
    return figure


def plot_shap_beeswarm(table: pd.DataFrame, card: dict[str, Any]) -> Figure:
    """SHAP values of the shipped model over every run (the explainer that fits its kind)."""
    import shap

    model = core.fit_final(table, card)
    x = table[card["features"]].astype(float).reset_index(drop=True)
    values = contributions(model, x, x)
    used = [name for name in card["features"] if values[name].abs().sum() > 0] or card["features"][:1]
    # The beeswarm jitters points at random: a fixed generator makes the plot reproducible.
    shap.summary_plot(values[used].to_numpy(), x[used], show=False, max_display=20, rng=np.random.default_rng(0))
    figure = plt.gcf()
    figure.suptitle(f"SHAP values of the shipped model ({card['model']})")
    figure.tight_layout()
    return figure
