"""Nodes of the forecast pipeline: thin wrappers over :mod:`finetune_predictor.learning_curve`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from finetune_predictor import learning_curve, tracking
from finetune_predictor.task_data import dataset_family
from finetune_predictor.tasks import OPEN_TASKS, task_type


def load_runs(forecast: dict[str, Any]) -> pd.DataFrame:
    """FINISHED runs of ``forecast.experiment_name`` with the target metric (the task's primary metric)."""
    table = tracking.runs_table(str(forecast.get("experiment_name") or tracking.EXPERIMENT_NAME))
    target = str(forecast.get("target_column", "finetuned_primary"))
    if table.empty or target not in table:
        raise ValueError(f"No finished runs with {target!r} in the MLflow experiment: run a sweep first "
                         "(kedro run --pipeline=sensitivity)")
    return table[table[target].notna()].reset_index(drop=True)


def evaluate_forward_in_size(runs: pd.DataFrame, forecast: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Hold out the largest size of every curve with ``forecast.min_sizes`` sizes and forecast it from the
    smaller ones, beside carry-forward and log-linear extrapolation; printed, and logged as metrics."""
    results = learning_curve.forward_in_size(runs, str(forecast.get("curve_family", "pow2")),
                                             str(forecast.get("target_column", "finetuned_primary")),
                                             float(forecast.get("interval_level", 0.9)),
                                             int(forecast.get("min_sizes", 3)))
    metrics = learning_curve.forward_metrics(results)
    if results.empty:
        print(f"\nForward in size: no curve with {forecast.get('min_sizes', 3)} sizes or more in the store.")
    else:
        print(f"\nForward in size ({metrics['forward_n_held_out']:.0f} curves, {metrics['forward_n_runs']:.0f} "
              f"held-out runs): MAE {metrics['forward_mae']:.1f} points (carry-forward "
              f"{metrics['baseline_carry_forward_mae']:.1f}, log-linear {metrics['baseline_loglinear_mae']:.1f}); "
              f"{100 * metrics['forward_coverage']:.0f}% of runs inside the "
              f"{100 * float(forecast.get('interval_level', 0.9)):.0f}% interval.")
    return results.round(4), {key: {"value": value, "step": 0} for key, value in metrics.items()}


def _strata(task: str, data: dict[str, Any], runs: pd.DataFrame) -> float:
    """Training examples per unit of ``train_per_class``: the labels of a classification task, 1 otherwise."""
    if task in OPEN_TASKS:
        return 1.0
    if data.get("labels"):
        return float(len(data["labels"]))
    if "param_train_per_class" in runs and runs["param_train_per_class"].notna().any():
        ratio = runs["param_train_size"].astype(float) / runs["param_train_per_class"].astype(float)
        return float(ratio.median())
    return 2.0


def forecast_sweep_sizes(runs: pd.DataFrame, forecast: dict[str, Any], sensitivity: dict[str, Any],
                         data: dict[str, Any]) -> pd.DataFrame:
    """For every curve of this data (task and dataset family), each size of the sweep definition: the mean of
    its runs where it has run, else the forecast with its interval. Printed and returned."""
    task, family = task_type(data), dataset_family(data)
    target = str(forecast.get("target_column", "finetuned_primary"))
    mine = runs[(runs["task"] == task) & (runs["dataset_family"] == family)]
    sizes = sorted({float(size) * _strata(task, data, mine) for size in sensitivity["train_per_class"]})
    rows = []
    for config, curve in learning_curve.curves_of(mine, target):
        ran = curve.groupby("train_size")["value"].agg(["mean", "count"])
        todo = [size for size in sizes if size not in ran.index]
        label = " ".join(f"{k.removeprefix('param_')}={v}" for k, v in config.items()
                         if k in ("param_learning_rate", "param_lora_r", "param_data_variant", "model"))
        for size in sizes:
            if size in ran.index:
                rows.append({"curve": label, "size": size, "status": "ran", "runs": int(ran.loc[size, "count"]),
                             "value": ran.loc[size, "mean"], "lower": None, "upper": None})
        if todo and ran.shape[0] >= 2:
            predicted = learning_curve.forecast(curve["train_size"], curve["value"], todo,
                                                str(forecast.get("curve_family", "pow2")),
                                                learning_curve.chance_floor(task),
                                                float(forecast.get("interval_level", 0.9)))
            rows += [{"curve": label, "size": r.size, "status": "forecast", "runs": 0, "value": r.predicted,
                      "lower": r.lower, "upper": r.upper} for r in predicted.itertuples(index=False)]
    table = pd.DataFrame(rows, columns=["curve", "size", "status", "runs", "value", "lower", "upper"])
    print(f"\nForecast for {task} on {family} ({target}):")
    print(table.round(3).to_string(index=False) if not table.empty else "  no curve of this data with two sizes yet")
    return table.round(4)
