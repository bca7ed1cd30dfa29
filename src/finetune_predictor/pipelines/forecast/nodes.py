"""Nodes of the forecast pipeline: thin wrappers over :mod:`finetune_predictor.prediction.learning_curve`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from finetune_predictor import tracking
from finetune_predictor.data.task_data import dataset_family
from finetune_predictor.errors import UserFacingError
from finetune_predictor.prediction import learning_curve
from finetune_predictor.tasks import OPEN_TASKS, task_type


def load_runs(forecast: dict[str, Any]) -> pd.DataFrame:
    """FINISHED runs of ``forecast.experiment_name`` with the target metric (the task's primary metric)."""
    experiment = str(forecast.get("experiment_name") or tracking.EXPERIMENT_NAME)
    table = tracking.runs_table(experiment)
    target = str(forecast.get("target_column", "finetuned_primary"))
    if table.empty or target not in table:
        raise UserFacingError(f"no finished run with {target!r} in the MLflow experiment {experiment!r}",
                              "forecast.experiment_name, forecast.target_column",
                              "run a sweep first (kedro run --pipeline=sensitivity), or name the experiment "
                              "that holds one")
    return table[table[target].notna()].reset_index(drop=True)


def evaluate_forward_in_size(runs: pd.DataFrame, forecast: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Hold out the largest size of every curve with ``forecast.min_sizes`` sizes and forecast it from the
    smaller ones, beside carry-forward and log-linear extrapolation (``forward_*``), and the same with every
    size from the third on held out in turn (rolling origin, ``forward_rolling_*``: more points from the same
    curves); each curve family's rolling MAE too, so the family is chosen by measurement (``auto``: each curve's
    on the curves of other data). Printed, and logged."""
    family, level = str(forecast.get("curve_family", learning_curve.AUTO)), float(forecast.get("interval_level", 0.9))
    target, min_sizes = str(forecast.get("target_column", "finetuned_primary")), int(forecast.get("min_sizes", 3))
    results = learning_curve.forward_in_size(runs, family, target, level, min_sizes)
    rolling = learning_curve.forward_in_size(runs, family, target, level, min_sizes, rolling=True)
    metrics = learning_curve.forward_metrics(results)
    metrics.update(learning_curve.forward_metrics(rolling, prefix="rolling_"))
    for other in learning_curve.FAMILIES:
        scored = rolling if other == family else learning_curve.forward_in_size(runs, other, target, level, min_sizes,
                                                                               rolling=True)
        if not scored.empty:
            metrics[f"rolling_forward_mae_{other}"] = learning_curve.forward_metrics(scored)["forward_mae"]
    _print_forward(metrics, min_sizes, level)
    if family == learning_curve.AUTO and not rolling.empty:
        print("Curve family chosen for each curve on the curves of other data: "
              + ", ".join(f"{name} {count}" for name, count in rolling.groupby("family")["run_id"].count().items())
              + " held-out runs")
    table = pd.concat([results.assign(check="largest"), rolling.assign(check="rolling")], ignore_index=True)
    return table.round(4), {key: {"value": value, "step": 0} for key, value in metrics.items()}


def _print_forward(metrics: dict[str, float], min_sizes: int, level: float) -> None:
    if not metrics.get("forward_n_held_out"):
        print(f"\nForward in size: no curve with {min_sizes} sizes or more in the store.")
        return
    for name, prefix, what in (("largest size held out", "", "curves"), ("rolling origin", "rolling_", "sizes")):
        print(f"\nForward in size, {name} ({metrics[prefix + 'forward_n_held_out']:.0f} held-out {what}, "
              f"{metrics[prefix + 'forward_n_runs']:.0f} runs): MAE {metrics[prefix + 'forward_mae']:.1f} points "
              f"(carry-forward {metrics[prefix + 'baseline_carry_forward_mae']:.1f}, log-linear "
              f"{metrics[prefix + 'baseline_loglinear_mae']:.1f}); {100 * metrics[prefix + 'forward_coverage']:.0f}% "
              f"of runs inside the {100 * level:.0f}% interval.")
    families = {name.removeprefix("rolling_forward_mae_"): value for name, value in metrics.items()
                if name.startswith("rolling_forward_mae_")}
    print("Rolling-origin MAE by curve family: " + ", ".join(f"{k} {v:.1f}" for k, v in families.items()))


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
    curve_family = str(forecast.get("curve_family", "auto"))
    if curve_family == learning_curve.AUTO:  # measured on the store's curves of other data, as the check chose it
        others = runs[(runs["task"] != task) | (runs["dataset_family"] != family)]
        curve_family = learning_curve.choose_family(learning_curve.curves_of(others, target),
                                                    int(forecast.get("min_sizes", 3)))
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
            predicted = learning_curve.forecast(curve["train_size"], curve["value"], todo, curve_family,
                                                learning_curve.chance_floor(task),
                                                float(forecast.get("interval_level", 0.9)),
                                                eval_size=curve["eval_size"].iloc[0])
            rows += [{"curve": label, "size": r.size, "status": "forecast", "runs": 0, "value": r.predicted,
                      "lower": r.lower, "upper": r.upper} for r in predicted.itertuples(index=False)]
    table = pd.DataFrame(rows, columns=["curve", "size", "status", "runs", "value", "lower", "upper"])
    print(f"\nForecast for {task} on {family} ({target}, curve family {curve_family}):")
    print(table.round(3).to_string(index=False) if not table.empty else "  no curve of this data with two sizes yet")
    return table.round(4)
