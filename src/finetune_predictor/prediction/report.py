"""What the predictor's evaluation says, for people: the named MLflow metrics, the noise floor any predictor of the
table faces, and the note that says plainly whether the shipped model beat its baselines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from finetune_predictor.prediction.predictor import POINTS, PredictorSettings


def metrics_for_mlflow(results: pd.DataFrame, settings: PredictorSettings) -> dict[str, float]:
    """The named metrics: ``rmse_random``, ``rmse_grouped_<column>`` per group column, ``rmse_grouped`` (the
    first group column's split, the dataset family by default), and ``baseline_<name>_rmse_<split>``."""
    aliases = {f"grouped_{settings.group_columns[0]}": "grouped"} if settings.group_columns else {}
    out: dict[str, float] = {}
    main = results[results["model"] == "selected"].set_index("split")
    for split in main.index:
        for name in {split, aliases.get(split, split)}:
            for metric in ("rmse", "mae", "spearman", "within3", "regret", "interval_coverage", "interval_width"):
                if metric in main and main.loc[split, metric] == main.loc[split, metric]:
                    out[f"{metric}_{name}"] = float(main.loc[split, metric])
    for _, row in results[results["model"] != "selected"].iterrows():
        for name in {row["split"], aliases.get(row["split"], row["split"])}:
            out[f"{row['model']}_rmse_{name}"] = float(row["rmse"])  # baseline_<name>_rmse_<split>, ...
    return out


def noise_floor(table: pd.DataFrame, settings: PredictorSettings) -> dict[str, float]:
    """How well any predictor of this table could do, in points of the target metric.

    ``seed_sd``: pooled standard deviation of the target among runs that differ only in their seed
    (column ``replicate_key``); a perfect predictor of each configuration's mean still has about this
    RMSE on a new seed. ``test_sampling_sd``: the binomial standard error of an accuracy measured on the
    run's test set (column ``finetuned_n``): sqrt(p(1-p)/n). For a mean of per-example scores in [0, 1]
    (QA F1, field accuracy) it is an upper bound: such a score's variance is at most p(1-p).
    ``within3_ceiling``: the share of errors within ±3 points for a normal error of sd ``seed_sd``."""
    floor: dict[str, float] = {}
    y = table[settings.target_column].astype(float)
    if "replicate_key" in table:
        groups = [g for _, g in y.groupby(table["replicate_key"]) if len(g) >= 2]
        dof = sum(len(g) - 1 for g in groups)
        if dof:
            floor["seed_sd"] = float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)) * POINTS
            floor["replicate_groups"] = float(len(groups))
            floor["within3_ceiling"] = math.erf(3.0 / (floor["seed_sd"] * math.sqrt(2))) if floor["seed_sd"] else 1.0
    if "finetuned_n" in table and table["finetuned_n"].notna().any():
        n = table["finetuned_n"].astype(float)
        floor["test_sampling_sd"] = float(np.sqrt(np.nanmean(y * (1 - y) / n))) * POINTS
    return floor


def honesty_note(results: pd.DataFrame, runs: int, settings: PredictorSettings,
                 floor: dict[str, float] | None = None) -> str:
    lines = []
    if runs < settings.min_runs:
        lines.append(f"Only {runs} runs (< predictor.min_runs={settings.min_runs}): these figures are too few to "
                     "support any claim about the predictor's accuracy.")
    for split in results["split"].unique():
        part = results[results["split"] == split].set_index("model")["rmse"]
        best_baseline = part.drop(index=[m for m in part.index if not m.startswith("baseline_")]).idxmin()
        if part["selected"] > part[best_baseline]:
            lines.append(f"On {split} splits the shipped model (RMSE {part['selected']:.2f} points) does NOT beat "
                         f"{best_baseline} ({part[best_baseline]:.2f}): the choice inside the folds cost more "
                         "than it gained.")
        else:
            lines.append(f"On {split} splits the shipped model (RMSE {part['selected']:.2f} points) is at least as "
                         f"good as the best baseline {best_baseline} ({part[best_baseline]:.2f}).")
    floor = floor or {}
    if "seed_sd" in floor:
        lines.append(f"Noise floor: runs that differ only in their seed spread by {floor['seed_sd']:.2f} points "
                     f"(sd over {floor['replicate_groups']:.0f} configurations), so no predictor can expect an RMSE "
                     f"below that or more than {floor['within3_ceiling']:.0%} of runs within ±3 points.")
    if "test_sampling_sd" in floor:
        lines.append(f"Each target value is itself measured with a standard error of {floor['test_sampling_sd']:.2f} "
                     "points (the size of the runs' test set; an upper bound for F1 and field accuracy).")
    return " ".join(lines)
