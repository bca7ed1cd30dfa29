"""What a sweep's runs show: aggregates over seeds, the knee of the data curve, gain per doubling of
data, best model and configuration, and the effect of label noise, duplicates and class imbalance.

Everything here is computed from the experiment summary (one row per FINISHED MLflow run), and every
number in the report names the runs it comes from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor.tasks import TASK_TYPES

# Every figure is the task's primary metric (accuracy for classification, F1 for QA, field accuracy for
# structured answers), logged on each run as ``<side>_primary``.
CONFIG_COLUMNS = ["model", "data_variant", "learning_rate", "lora_r", "lora_alpha", "lora_dropout", "num_train_epochs"]
CLEAN = "clean"
CLASSICAL_NAMES = {"accuracy": "TF-IDF + logistic regression", "f1": "question-overlap window",
                   "field accuracy": "nearest training record's answer"}


def metric_name(results: pd.DataFrame) -> str:
    """The primary metric's name for the sweep's task, as the report writes it."""
    task = str(results["task"].dropna().iloc[0]) if "task" in results and results["task"].notna().any() else None
    return TASK_TYPES[task].primary_metric.replace("_", " ") if task in TASK_TYPES else "accuracy"


def aggregate(results: pd.DataFrame, metric: str = "finetuned_primary") -> pd.DataFrame:
    """Mean, standard deviation and count over seeds for every configuration and size."""
    if results.empty:
        return pd.DataFrame(columns=[*CONFIG_COLUMNS, "train_size", "mean", "std", "n", "run_ids"])
    grouped = results.groupby([*CONFIG_COLUMNS, "train_size"], dropna=False)
    table = grouped[metric].agg(["mean", "std", "count"]).rename(columns={"count": "n"}).reset_index()
    table["std"] = table["std"].fillna(0.0)
    table["run_ids"] = grouped["run_id"].agg(lambda ids: ",".join(sorted(ids))).to_numpy()
    return table


def knee_point(sizes: list[float], values: list[float]) -> float | None:
    """The size after which more data pays least: the point furthest above the chord of the curve
    (Kneedle on log2 size, for an increasing, concave curve). None with fewer than three sizes."""
    if len(sizes) < 3:
        return None
    x = np.log2(np.asarray(sizes, dtype=float))
    y = np.asarray(values, dtype=float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    xn, yn = (x - x.min()) / np.ptp(x), (y - y.min()) / np.ptp(y)
    distance = yn - xn
    index = int(np.argmax(distance))
    return float(sizes[index]) if distance[index] > 0 else None


def gain_per_doubling(sizes: list[float], values: list[float]) -> float | None:
    """Least-squares slope of the metric against log2(size): points gained per doubling of data."""
    if len(sizes) < 2:
        return None
    slope, _ = np.polyfit(np.log2(np.asarray(sizes, dtype=float)), np.asarray(values, dtype=float), 1)
    return float(slope)


def analyse(results: pd.DataFrame) -> dict[str, Any]:
    """The findings, each with the run ids behind it."""
    if results.empty:
        return {"runs": 0, "curves": [], "best": None, "best_model": None, "variant_effects": []}
    table = aggregate(results)
    curves = []
    for keys, curve in table.groupby(CONFIG_COLUMNS, dropna=False):
        curve = curve.sort_values("train_size")
        sizes, means = curve["train_size"].tolist(), curve["mean"].tolist()
        config = dict(zip(CONFIG_COLUMNS, keys, strict=True))
        curves.append({
            **config, "sizes": sizes, "mean_primary": means, "std_primary": curve["std"].tolist(),
            "seeds": curve["n"].tolist(), "knee_size": knee_point(sizes, means),
            "gain_per_doubling": gain_per_doubling(sizes, means),
            "monotone": bool(all(b >= a - 0.02 for a, b in itertools.pairwise(means))),
            "run_ids": curve["run_ids"].tolist(),
        })
    selected_on = "validation" if _has(results, "validation_primary") else "test"
    if selected_on == "validation":
        table["selection"] = aggregate(results, "validation_primary")["mean"].to_numpy()
    else:  # no validation split: the choice is made on the test set, and the report says so
        table["selection"] = table["mean"]
    clean = table[table["data_variant"] == CLEAN]
    pool = clean if not clean.empty else table
    best_row = pool.sort_values(["selection", "train_size"], ascending=[False, True]).iloc[0]
    largest = pool[pool["train_size"] == pool["train_size"].max()]
    per_model = largest.sort_values("selection").groupby("model").tail(1).set_index("model")
    per_model = per_model.sort_values("selection", ascending=False)
    return {
        "runs": len(results),
        "metric": metric_name(results),
        "curves": curves,
        "selected_on": selected_on,
        "best": {**{c: _plain(best_row[c]) for c in [*CONFIG_COLUMNS, "train_size"]},
                 "mean_primary": float(best_row["mean"]), "std_primary": float(best_row["std"]),
                 "selection_primary": float(best_row["selection"]),
                 "seeds": int(best_row["n"]), "run_ids": best_row["run_ids"]},
        "best_model": {"model": per_model.index[0], "mean_primary": float(per_model["mean"].iloc[0]),
                       "train_size": int(largest["train_size"].iloc[0]), "run_ids": per_model["run_ids"].iloc[0]},
        "variant_effects": variant_effects(results),
        "baseline_primary": {model: float(group["baseline_primary"].mean())
                              for model, group in results.groupby("model")},
        "classical_primary": _classical_by_size(pool, results),
    }


def _has(results: pd.DataFrame, column: str) -> bool:
    return column in results and results[column].notna().all()


def _classical_by_size(pool: pd.DataFrame, results: pd.DataFrame) -> dict[str, float]:
    """The cheap classical baseline's primary metric per training size (clean data), mean over seeds."""
    if "classical_primary" not in results or results["classical_primary"].isna().all():
        return {}
    clean = results[results["data_variant"] == CLEAN] if (results["data_variant"] == CLEAN).any() else results
    return {str(int(size)): float(group["classical_primary"].mean())
            for size, group in clean.groupby("train_size") if group["classical_primary"].notna().any()}


def variant_effects(results: pd.DataFrame) -> list[dict[str, Any]]:
    """The primary metric of each degraded-data variant minus the clean run of the same config, size and seed."""
    keys = [c for c in CONFIG_COLUMNS if c != "data_variant"] + ["train_size", "seed"]
    clean = results[results["data_variant"] == CLEAN].set_index(keys)
    effects = []
    for variant, group in results[results["data_variant"] != CLEAN].groupby("data_variant"):
        matched = group.set_index(keys).join(clean[["finetuned_primary", "run_id"]], rsuffix="_clean", how="inner")
        if matched.empty:
            continue
        deltas = matched["finetuned_primary"] - matched["finetuned_primary_clean"]
        first = group.iloc[0]
        effects.append({"variant": variant, "label_noise": float(first["label_noise"]),
                        "duplicate_rate": float(first["duplicate_rate"]),
                        "positive_share": float(first["positive_share"]),
                        "mean_delta_primary": float(deltas.mean()), "pairs": len(deltas),
                        "run_ids": ",".join(sorted([*matched["run_id"], *matched["run_id_clean"]]))})
    return effects


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _config_label(row: pd.Series | dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    parts = {"model": str(row["model"]), "data_variant": str(row["data_variant"]),
             "learning_rate": f"lr={row['learning_rate']:.0e}", "lora_r": f"r={row['lora_r']}",
             "lora_alpha": f"a={row['lora_alpha']}", "num_train_epochs": f"ep={row['num_train_epochs']:g}"}
    return " ".join(v for k, v in parts.items() if k not in skip)


# --- plots -----------------------------------------------------------------------------------------------


def no_runs_figure() -> Figure:
    """What a plot shows while a sweep has no finished run (every run failed, say): a message, not a crash
    that would lose the report and the status already computed."""
    figure, axis = plt.subplots(figsize=(5, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, "No finished runs yet", ha="center", va="center")
    return figure


def plot_accuracy_vs_size(results: pd.DataFrame,
                          metrics: Sequence[str] = ("finetuned_primary", "finetuned_f1_macro",
                                                    "finetuned_exact_match")) -> Figure:
    """One panel per metric: the data-size curve of every configuration (mean ± sd over seeds), with
    each model's baseline as a dotted line. Ticks sit at the sizes actually trained."""
    if results.empty:
        return no_runs_figure()
    metrics = [m for m in metrics if m in results and results[m].notna().any()]
    figure, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    sizes = sorted(results["train_size"].unique())
    for axis, metric in zip(axes[0], metrics, strict=True):
        table = aggregate(results, metric)
        for keys, curve in table.groupby(CONFIG_COLUMNS, dropna=False):
            curve = curve.sort_values("train_size")
            label = _config_label(dict(zip(CONFIG_COLUMNS, keys, strict=True)))
            axis.errorbar(curve["train_size"], curve["mean"], yerr=curve["std"], marker="o", capsize=3, label=label)
        baseline = metric.replace("finetuned_", "baseline_", 1)
        for model, group in results.groupby("model"):
            if baseline in group and group[baseline].notna().any():
                axis.axhline(group[baseline].mean(), linestyle=":", color="grey")
                axis.annotate(f"{model} baseline", (sizes[0], group[baseline].mean()), fontsize=7, color="grey",
                              va="bottom")
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.minorticks_off()
        axis.set_xlabel("training examples (log scale)")
        axis.set_ylabel(metric.replace("_", " ") + " (mean ± sd over seeds)")
        axis.set_title(f"Data-size curve: {metric.removeprefix('finetuned_').replace('_', ' ')}")
        axis.legend(fontsize=6, loc="lower right")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_accuracy_vs_hyperparameter(results: pd.DataFrame, column: str) -> Figure:
    if results.empty:
        return no_runs_figure()
    figure, axis = plt.subplots(figsize=(6, 4))
    clean = results[results["data_variant"] == CLEAN] if (results["data_variant"] == CLEAN).any() else results
    for (model, size), group in clean.groupby(["model", "train_size"]):
        stats = group.groupby(column)["finetuned_primary"].agg(["mean", "std"]).reset_index().fillna(0.0)
        axis.errorbar(stats[column], stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=f"{model} n={size}")
    if column == "learning_rate":
        axis.set_xscale("log")
    axis.set_xlabel(column.replace("_", " "))
    axis.set_ylabel(f"fine-tuned {metric_name(results)}")
    axis.set_title(f"{metric_name(results).capitalize()} vs {column.replace('_', ' ')}")
    axis.legend(fontsize=6)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_model_size_heatmap(results: pd.DataFrame) -> Figure:
    if results.empty:
        return no_runs_figure()
    clean = results[results["data_variant"] == CLEAN] if (results["data_variant"] == CLEAN).any() else results
    # Each cell: the best configuration's mean over seeds for that model and size.
    table = aggregate(clean).groupby(["model", "train_size"])["mean"].max().unstack("train_size")
    figure, axis = plt.subplots(figsize=(1.6 + 1.1 * max(1, table.shape[1]), 1.2 + 0.6 * max(1, table.shape[0])))
    values = table.to_numpy(dtype=float)
    image = axis.imshow(values, cmap="viridis", aspect="auto", vmin=min(0.5, float(np.nanmin(values))), vmax=1.0)
    axis.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    axis.set_yticks(range(table.shape[0]), list(table.index))
    for (i, j), value in np.ndenumerate(table.to_numpy(dtype=float)):
        if not math.isnan(value):
            axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    axis.set_xlabel("training examples")
    axis.set_title(f"Best fine-tuned {metric_name(results)}: model x size")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return figure


# --- text reports ----------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _mean_sd(mean: float, sd: float, seeds: int, plus_minus: str) -> str:
    """Points with the spread over seeds; a single seed has no spread to show (a 0.0 would claim one)."""
    return f"{100 * mean:.1f} {plus_minus} {100 * sd:.1f}" if seeds > 1 else f"{100 * mean:.1f}"


def _runs(run_ids: str, limit: int = 6) -> str:
    ids = [i[:8] for i in run_ids.split(",") if i]
    return ", ".join(ids[:limit]) + (f" (+{len(ids) - limit})" if len(ids) > limit else "")


def markdown_report(results: pd.DataFrame, analysis: dict[str, Any], status: dict[str, Any]) -> str:
    lines = ["# Sensitivity analysis", ""]
    if analysis["runs"] == 0:
        return "\n".join([*lines, "No finished runs yet.", ""])
    dataset = ", ".join(sorted({str(d) for d in results["dataset"].dropna()})) or "n/a"
    lines += [f"Dataset: {dataset}. Test set sha256 {str(results['test_sha256'].iloc[0])[:12]} (fixed for every run).",
              f"Runs: {analysis['runs']} finished ({status.get('ran', 0)} new, {status.get('reused', 0)} reused, "
              f"{status.get('failed', 0)} failed and excluded). Run ids are MLflow run ids (first 8 characters).", ""]
    best, best_model = analysis["best"], analysis["best_model"]
    if analysis.get("selected_on") == "validation":
        how = (f"selected on the validation set ({_pct(best['selection_primary'])} there), reported on the "
               "test set")
    else:
        how = "selected on test: no validation split, so this figure is optimistic"
    lines += ["## Findings", "",
              f"- **Best configuration** ({how}): {_config_label(best)} with {best['train_size']} examples: "
              f"test {analysis['metric']} {_pct(best['mean_primary'])}"
              + (f" ± {_pct(best['std_primary'])} over {best['seeds']} seeds" if best["seeds"] > 1 else " (1 seed)")
              + f" (runs {_runs(best['run_ids'])}).",
              f"- **Best model** at the largest size ({best_model['train_size']}, {analysis.get('selected_on', 'test')}"
              f"-selected): {best_model['model']}, {_pct(best_model['mean_primary'])} on test "
              f"(runs {_runs(best_model['run_ids'])})."]
    for model, accuracy in analysis["baseline_primary"].items():
        lines.append(f"- **Baseline** {model} without fine-tuning: {_pct(accuracy)}.")
    if analysis.get("classical_primary"):
        cells = ", ".join(f"n={size}: {_pct(value)}" for size, value in analysis["classical_primary"].items())
        lines.append(f"- **Classical** baseline ({CLASSICAL_NAMES.get(analysis['metric'], 'cheap baseline')}) on the "
                     f"same subsets and test set (seconds on a CPU): {cells}. The fine-tune is worth its cost only "
                     "where it beats this.")
    for curve in analysis["curves"]:
        if curve["data_variant"] != CLEAN:
            continue
        knee = ("none (the curve is not concave over these sizes)" if curve["knee_size"] is None
                else f"{int(curve['knee_size'])} examples")
        gain = "n/a" if curve["gain_per_doubling"] is None else f"{100 * curve['gain_per_doubling']:+.1f} points"
        lines.append(f"- **Data curve** {_config_label(curve, ('data_variant',))}: knee at {knee}; "
                     f"{gain} per doubling of data; {'monotone' if curve['monotone'] else 'not monotone'} "
                     f"(runs {_runs(','.join(curve['run_ids']))}).")
    for effect in analysis["variant_effects"]:
        lines.append(f"- **{effect['variant']}** (label noise {effect['label_noise']:g}, duplicates "
                     f"{effect['duplicate_rate']:g}, positive share {effect['positive_share']:g}): "
                     f"{100 * effect['mean_delta_primary']:+.1f} {analysis['metric']} points vs clean data over "
                     f"{effect['pairs']} matched run pair(s) (runs {_runs(effect['run_ids'])}).")
    lines += ["", f"## Data-size curves (fine-tuned {analysis['metric']}, mean ± sd over seeds)", "",
              "| configuration | " + " | ".join(f"n={int(s)}" for s in _all_sizes(analysis)) + " |",
              "|---|" + "---|" * len(_all_sizes(analysis))]
    for curve in analysis["curves"]:
        cells = {int(s): _mean_sd(m, d, n, "±") for s, m, d, n in
                 zip(curve["sizes"], curve["mean_primary"], curve["std_primary"], curve["seeds"], strict=True)}
        lines.append(f"| {_config_label(curve)} | " + " | ".join(cells.get(int(s), "") for s in _all_sizes(analysis))
                     + " |")
    lines += ["", "![accuracy vs size](accuracy_vs_size.png)",
              "![accuracy vs learning rate](accuracy_vs_learning_rate.png)",
              "![accuracy vs rank](accuracy_vs_lora_r.png)", "![model x size](model_size_heatmap.png)", ""]
    lines += _forecast_lines(status.get("forecast"))
    lines += _regret_lines(status.get("stopping_regret"), analysis.get("metric", "accuracy"))
    return "\n".join(lines + _failure_lines(status.get("failures")))


def _failure_lines(failures: list[dict[str, Any]] | None) -> list[str]:
    if not failures:
        return []
    return ["## Failed configurations (excluded)", "", *[f"- {f['config']}: {f['error']}" for f in failures], ""]


def _forecast_lines(forecast: dict[str, Any] | None) -> list[str]:
    """What a forecast-driven sweep saved, and what it skipped with each forecast (never a result)."""
    if not forecast:
        return []
    planned, trained = forecast["planned_steps"], forecast["trained_steps"]
    if not planned:  # every configuration was already finished: the forecast had nothing left to decide
        return ["## Forecast-driven sweep", "", "Every configuration had already run (all reused): nothing was left "
                "to forecast or stop, and no compute was saved by this run.", ""]
    saved = 1 - trained / planned
    lines = ["## Forecast-driven sweep", "",
             f"Trained {trained} of {planned} planned optimizer steps ({saved:.0%} of the compute saved). Skipped "
             "configurations are forecasts, not results: they are not in the tables above.", ""]
    lines += [f"- {entry['config']}: forecast {_pct(entry['predicted'])} [{_pct(entry['lower'])}, "
              f"{_pct(entry['upper'])}]; {entry['reason']}." for entry in forecast["skipped"]]
    return [*lines, ""]


def _regret_lines(regret: dict[str, Any] | None, metric: str) -> list[str]:
    """The regret of stopping by forecast, once the full grid has run too."""
    if not regret:
        return []
    planned, trained = regret["planned_steps"], regret["trained_steps"]
    choice = ("the same configuration as the full grid" if regret["same_choice"] else
              f"another configuration than the full grid: regret {regret['regret_points']:+.1f} test {metric} points")
    return ["## Regret of stopping by forecast (the full grid has run too)", "",
            f"A forecast-driven run of this sweep trained {trained} of {planned} optimizer steps "
            f"({1 - trained / planned:.0%} saved) and skipped {regret['skipped_runs']} runs. Now that they have run, "
            f"picking on {regret['target']} at n={regret['largest_size']:g} it would have chosen {choice} "
            f"({_pct(regret['forecast_choice_test'])} vs {_pct(regret['grid_choice_test'])} on test; picking on "
            f"test instead, the regret is {regret['oracle_regret_points']:+.1f} points).",
            f"The skipped runs' forecasts were off by {regret['skipped_forecast_mae_points']:.1f} points on average, "
            f"{regret['skipped_forecast_coverage']:.0%} inside their interval; the best of them scored "
            f"{_pct(regret['skipped_best_actual'])} on {regret['target']}.", ""]


def _all_sizes(analysis: dict[str, Any]) -> list[float]:
    return sorted({s for curve in analysis["curves"] for s in curve["sizes"]})


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def latex_fragment(analysis: dict[str, Any]) -> str:
    """A table of the data-size curves and figure references, ready to \\input into a paper."""
    sizes = _all_sizes(analysis)
    lines = [r"% Generated by finetune-predictor from the sweep's MLflow runs; do not edit by hand.",
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * len(sizes) + r"}", r"\toprule",
             "Configuration & " + " & ".join(f"$n={int(s)}$" for s in sizes) + r" \\", r"\midrule"]
    for curve in analysis["curves"]:
        cells = {int(s): _mean_sd(m, d, n, "$\\pm$") for s, m, d, n in
                 zip(curve["sizes"], curve["mean_primary"], curve["std_primary"], curve["seeds"], strict=True)}
        lines.append(_tex(_config_label(curve)) + " & " + " & ".join(cells.get(int(s), "--") for s in sizes) + r" \\")
    knees = [c for c in analysis["curves"] if c["data_variant"] == CLEAN and c["knee_size"] is not None]
    caption = f"Fine-tuned {analysis.get('metric', 'accuracy')} (\\%, mean $\\pm$ sd over seeds) by training-set size."
    if knees:
        caption += f" Knee of the data curve at $n={int(knees[0]['knee_size'])}$."
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:sensitivity}",
              r"\end{table}", "",
              r"\begin{figure}[t]", r"\centering",
              r"\includegraphics[width=0.48\linewidth]{accuracy_vs_size.png}",
              r"\includegraphics[width=0.48\linewidth]{model_size_heatmap.png}",
              r"\caption{Data-size curve with seed error bars (left) and the best configuration by model and size "
              r"(right).}",
              r"\label{fig:sensitivity}", r"\end{figure}", ""]
    return "\n".join(lines)
