"""Nodes of the predictor pipeline."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor.errors import UserFacingError
from finetune_predictor.prediction import predictor as core
from finetune_predictor.prediction import report
from finetune_predictor.prediction.model_selection import contributions
from finetune_predictor.tracking import archive

logger = logging.getLogger(__name__)


def load_runs_table(runs_archive: pd.DataFrame, predictor: dict[str, Any]) -> pd.DataFrame:
    """The runs the predictor learns from: the committed runs archive and the tracking store's finished runs it does
    not hold yet (``predictor.experiment_name``; null = the archive alone). ``predictor.table_path`` replaces the
    committed archive: a runs archive of your own (same schema, checked), or any CSV of runs with the target and
    group columns (read alone, as it is)."""
    settings = core.PredictorSettings.from_params(predictor)
    path = predictor.get("table_path")
    if path and not archive.is_archive_file(path):
        table = pd.read_csv(path)
        if settings.target_column not in table:
            raise UserFacingError(f"{path}: no target column {settings.target_column!r}; "
                                  f"columns: {list(table.columns)}", "predictor.target_column",
                                  "name one of the table's columns")
    else:
        archived = archive.load(path) if path else runs_archive
        experiment = predictor.get("experiment_name")
        store = archive.store_rows(str(experiment), required=False)[0] if experiment else archived.iloc[:0]
        merged, laid = archive.with_store(archived, store)
        for item in laid.get("refused_runs", []):
            logger.warning("Store run %s left out of the predictor's table: %s", item["run_id"], item["reason"])
        table = archive.as_runs_table(merged)
    if table.empty:
        raise UserFacingError("the runs table is empty", "predictor.table_path, predictor.experiment_name",
                              f"commit runs to {archive.ARCHIVE_PATH} (kedro run --pipeline=archive_runs), run "
                              "sweeps with sensitivity.meta_features set, or pass predictor.table_path")
    table = table[table[settings.target_column].notna()].reset_index(drop=True)
    return core.runs_with_features(table, settings)


def evaluate_predictor(table: pd.DataFrame, predictor: dict[str, Any]) -> tuple[
        pd.DataFrame, dict[str, Any], dict[str, Any], str]:
    """Predictor and baselines on random and grouped splits: the table, SHAP info, MLflow metrics, a report."""
    settings = core.PredictorSettings.from_params(predictor)
    results, shap_info = core.evaluate(table, settings)
    floor = report.noise_floor(table, settings)
    named = report.metrics_for_mlflow(results, settings) | {f"noise_floor_{key}": value for key, value in floor.items()}
    metrics = {key: {"value": value, "step": 0} for key, value in named.items() if value == value}
    note = report.honesty_note(results, len(table), settings, floor)
    markdown = "\n".join(["# Predictor evaluation", "", f"Runs: {len(table)}. Target: {settings.target_column}. "
                        "Errors in points of the target metric.", "", note, "",
                        _markdown_table(results.round(3)), "",
                        f"SHAP rank stability across folds (mean Spearman): {shap_info['rank_stability']:.2f}", ""])
    print("\n" + markdown)
    return results, core.to_json(shap_info), metrics, markdown


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def train_predictor(table: pd.DataFrame, predictor: dict[str, Any]) -> dict[str, Any]:
    """The model chosen on every run (candidates and baselines compared by cross-validation), described by a
    JSON card: the winner, every candidate's inner CV RMSE, the conformal widths, the table's fingerprint."""
    card = core.train_final(table, core.PredictorSettings.from_params(predictor))
    sources = table[archive.SOURCE_COLUMN] if archive.SOURCE_COLUMN in table else pd.Series("table", table.index)
    card["rows_from"] = {str(source): int(count) for source, count in sources.value_counts().items()}
    print(f"\nTrained on {len(table)} runs (" + ", ".join(f"{n} from the {source}" for source, n in
                                                    card["rows_from"].items()) + ")")
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
