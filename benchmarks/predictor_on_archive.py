"""The outcome predictor judged on the runs archive, in one run: leave-one-family-out, leave-one-task-out, random
(seed twins kept in one fold) and forward-in-size, each beside its baselines and the noise floor.

    .venv/bin/python benchmarks/predictor_on_archive.py                 # the committed archive
    .venv/bin/python benchmarks/predictor_on_archive.py --write-docs    # and rewrite the table in docs/predictor.md
    .venv/bin/python benchmarks/predictor_on_archive.py --archive my_runs.csv

Grouped splits are scored one group column at a time; the shipped model is chosen inside each training fold
(nested), never on the fold it is scored on. Forward in size: fit on every run of a smaller training size, predict
the runs of the next size; compared on the runs whose own configuration ran at a smaller size, so carry-forward
(that configuration's score at its largest smaller size) and the per-configuration learning curve
(``forecast.curve_family: auto``) can predict them too. Errors are in points of the target metric.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from docs_section import stamp, write_section  # noqa: E402

from finetune_predictor.prediction import cv_splits, learning_curve, report  # noqa: E402
from finetune_predictor.prediction import predictor as core  # noqa: E402
from finetune_predictor.prediction.model_selection import baseline_models  # noqa: E402
from finetune_predictor.tracking import archive  # noqa: E402

BASELINES = ("baseline_mean", "baseline_best_single_feature", "baseline_ridge", "baseline_early_stopping")
# The targets: shipped RMSE / best baseline RMSE (grouped splits), forward MAE / carry-forward MAE.
TARGETS = {"grouped_dataset_family": 0.8, "grouped_task": 1.0, cv_splits.FORWARD_SPLIT: 0.8}
SPLIT_NAMES = {"grouped_dataset_family": "leave one family out", "grouped_task": "leave one task out",
               "grouped_source_corpus": "leave one source corpus out (families sharing texts together)",
               "grouped_model": "leave one base model out", "random": "random (seed twins together)",
               cv_splits.FORWARD_SPLIT: "forward in size (next size from smaller ones)"}


def load_table(path: Path, settings: core.PredictorSettings) -> pd.DataFrame:
    table = archive.as_runs_table(archive.load(path))
    return core.runs_with_features(table[table[settings.target_column].notna()].reset_index(drop=True), settings)


def split_rows(results: pd.DataFrame, winners: dict[str, list[str]]) -> list[dict]:
    """One row per split: the shipped model beside each baseline and the best of them."""
    rows = []
    for split, part in results.groupby("split", sort=False):
        by_model = part.set_index("model")
        baselines = by_model.loc[[name for name in BASELINES if name in by_model.index], "rmse"]
        best = baselines.idxmin()
        shipped = by_model.loc["selected"]
        chosen = pd.Series(winners.get(split, [])).value_counts()
        rows.append({"split": split, "runs": int(shipped["n"]), "shipped": ", ".join(
            f"{name.removeprefix('baseline_')} {count}" for name, count in chosen.items()),
            "rmse": float(shipped["rmse"]), **{name: float(baselines[name]) for name in baselines.index},
            "lightgbm_shap": float(by_model.loc["lightgbm_shap", "rmse"]) if "lightgbm_shap" in by_model.index
            else float("nan"), "best": best, "ratio": float(shipped["rmse"] / baselines[best]),
            "coverage": float(shipped.get("interval_coverage", float("nan")))})
    return rows


def carry_forward(table: pd.DataFrame, target: str) -> pd.Series:
    """Each run's own configuration's mean score at its largest smaller training size (NaN where it has none)."""
    keys = [key for key in learning_curve.CURVE_KEYS if key in table]
    sizes = pd.to_numeric(table[cv_splits.SIZE_COLUMN], errors="coerce")
    out = pd.Series(np.nan, index=table.index)
    for _, curve in table.assign(_size=sizes).groupby(keys, dropna=False):
        means = curve.groupby("_size")[target].mean().sort_index()
        for index, size in curve["_size"].items():
            smaller = means[means.index < size]
            if len(smaller):
                out[index] = smaller.iloc[-1]
    return out


def forward_rows(table: pd.DataFrame, settings: core.PredictorSettings) -> tuple[dict, dict]:
    """MAE in points, forward in size, of the meta-feature predictor, its baselines, carry-forward and the
    per-configuration learning curve (the forecast pipeline's): once on the runs carry-forward and the predictor
    both predict, once on the runs the learning curve predicts (it needs two smaller sizes of the configuration)."""
    x = table[core.feature_columns(table, settings)].astype(float)
    y = table[settings.target_column].to_numpy(dtype=float)
    folds = cv_splits.forward_size_folds(table)
    groups_of = cv_splits.groups_of_table(table)
    models = {"selected": core.selected_model(settings, groups_of), **baseline_models()}
    predicted = {name: core.predict_out_of_fold(fit, x, y, folds)[0] for name, fit in models.items()}
    predicted["carry_forward"] = carry_forward(table, settings.target_column).to_numpy()
    curve = learning_curve.forward_in_size(table, learning_curve.AUTO, settings.target_column, 0.9, 3, rolling=True)
    by_run = curve.set_index("run_id")["predicted"] if not curve.empty else pd.Series(dtype=float)
    predicted["learning_curve"] = table["run_id"].map(by_run).to_numpy(dtype=float)
    return _on_common_runs(predicted, y, ("carry_forward", "selected")), _on_common_runs(
        predicted, y, ("carry_forward", "learning_curve"))


def _on_common_runs(predicted: dict[str, np.ndarray], y: np.ndarray, required: tuple[str, ...]) -> dict[str, float]:
    """MAE (points) of every method on the runs that each of ``required`` predicts (so the ratio is fair)."""
    common = np.logical_and.reduce([np.isfinite(predicted[name]) for name in required])
    out = {name: float(100 * np.mean(np.abs(values[common] - y[common]))) if common.any() else float("nan")
           for name, values in predicted.items() if np.isfinite(values[common]).all()}
    return {**out, "runs": int(common.sum())}


def render(table: pd.DataFrame, rows: list[dict], forward: tuple[dict, dict], floor: dict, path: Path) -> str:
    tasks, families = table["task"].nunique(), table["dataset_family"].nunique()
    lines = [f"Archive `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`: {len(table)} runs with "
             f"meta-features, {tasks} tasks, {families} dataset families, {table['model'].nunique()} base model(s). "
             "RMSE in points of the task's primary metric; the shipped model is chosen inside each training fold.",
             "", "| split | runs | shipped model (folds) | shipped RMSE | mean | best single feature | ridge | "
             "early stopping | LightGBM-SHAP | shipped ÷ best baseline | target | 90 % interval coverage |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        target = TARGETS.get(row["split"])
        verdict = "" if target is None or row["split"] == cv_splits.FORWARD_SPLIT else (
            f"≤ {target:g}: {'met' if row['ratio'] <= target else 'not met'}")
        lines.append(f"| {SPLIT_NAMES.get(row['split'], row['split'])} | {row['runs']} | {row['shipped']} | "
                     f"{row['rmse']:.1f} | " + " | ".join(f"{row.get(name, float('nan')):.1f}" for name in BASELINES)
                     + f" | {row['lightgbm_shap']:.1f} | {row['ratio']:.2f} ({row['best'].removeprefix('baseline_')})"
                     f" | {verdict} | {row['coverage']:.0%} |")
    lines += ["", "Forward in size (MAE, points, on held-out runs whose own configuration ran at a smaller size):"]
    for label, scores, shipped in (("meta-feature predictor", forward[0], "selected"),
                                   ("learning curve (the forecast pipeline's shipped forecast)", forward[1],
                                    "learning_curve")):
        if not scores["runs"]:
            lines.append(f"- {label}: no held-out run yet.")
            continue
        ratio = scores[shipped] / scores["carry_forward"] if scores["carry_forward"] else float("nan")
        lines.append(f"- {label}, {scores['runs']} runs: " + ", ".join(
            f"{name.removeprefix('baseline_')} {value:.1f}" for name, value in scores.items() if name != "runs")
            + f"; ÷ carry-forward {ratio:.2f} (target ≤ 0.8: {'met' if ratio <= 0.8 else 'not met'}).")
    noise = [f"seed-to-seed SD {floor['seed_sd']:.1f} points over {floor['replicate_groups']:.0f} configurations"
             if "seed_sd" in floor else "no seed replicates yet",
             f"test-set SE {floor['test_sampling_sd']:.1f} points" if "test_sampling_sd" in floor else ""]
    lines += ["", "Noise floor: " + "; ".join(n for n in noise if n) + ". No predictor can be expected to beat it."]
    return "\n".join(lines)


def too_few(table: pd.DataFrame, settings: core.PredictorSettings, path: Path) -> str:
    """What the archive holds when it is below ``predictor.min_runs``: counts only, no predictor figure."""
    archived = archive.load(path)
    tasks = archived["task"].value_counts().items() if len(archived) else []
    counts = ", ".join(f"{task} {n}" for task, n in tasks) or "none"
    return (f"Archive `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`: {len(archived)} finished "
            f"runs ({counts}; {archived['dataset_family'].nunique() if len(archived) else 0} dataset families), "
            f"{len(table)} with meta-features. Below predictor.min_runs = {settings.min_runs}: no split is scored "
            "and no predictor figure is claimed. Grow the archive (`kedro meta-dataset --chunk <name>`, then "
            "`kedro run --pipeline=archive_runs`) and re-run this benchmark.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ROOT / archive.ARCHIVE_PATH)
    parser.add_argument("--write-docs", action="store_true", help="rewrite the table in docs/predictor.md")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "conf/base/parameters_predictor.yml").read_text())["predictor"]
    settings = core.PredictorSettings.from_params(params)
    table = load_table(args.archive.resolve(), settings)
    if len(table) < settings.min_runs:  # no split of so few runs can say anything about the predictor
        markdown = too_few(table, settings, args.archive.resolve())
    else:
        results, info = core.evaluate(table, settings)
        markdown = render(table, split_rows(results, info["winners"]), forward_rows(table, settings),
                          report.noise_floor(table, settings), args.archive.resolve())
    print(markdown)
    if args.write_docs:
        command = "python benchmarks/predictor_on_archive.py --write-docs"
        print("\nwrote", write_section("docs/predictor.md", "predictor_on_archive", markdown + "\n\n" + stamp(command)))


if __name__ == "__main__":
    main()
