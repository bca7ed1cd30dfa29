"""Replay the forecast-driven sweep's stopping rule over a full grid that has already run: what it would have
stopped at each interval level, the compute it would have saved and the regret of stopping. No training: the
grid's finished runs are revealed size by size to the sweep's own ``halving.run_by_forecast``, exactly as a
forecast-driven sweep would have seen them, and ``halving.stopping_regret`` scores the result.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python benchmarks/replay_forecast_stopping.py [levels...]
        [--write-docs]    # also rewrite its section of docs/predictor.md

The levels are a sensitivity analysis of one finished grid, not a tuning: choosing the level that looks best
here would select on the test set the regret is measured on.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

import pandas as pd
from docs_section import stamp, write_section

from finetune_predictor import tracking
from finetune_predictor.pipelines.sensitivity.grid import SweepConfig
from finetune_predictor.pipelines.sensitivity.halving import curve_of, run_by_forecast, stopping_regret

RESULT_COLUMNS = {"train_size": "param_train_size", "validation_n": "validation_n", "test_size": "param_test_size"}
SWEEP_PARAMS = ("param_train_per_class", "param_learning_rate", "param_lora_r", "param_lora_alpha",
                "param_lora_dropout", "param_num_train_epochs", "param_seed")
ONE_SWEEP = ("task", "dataset_family", "param_test_sha256")  # a grid is replayed on one data set at a time


def grid_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One grid's runs (one task, data family and test set) as the sweep's result rows (``config``: the
    SweepConfig): sweep runs only, clean data, curves with three sizes or more, at the sizes every such curve ran
    (a full grid; a run of another sweep at another size is left out)."""
    table = table.dropna(subset=[c for c in SWEEP_PARAMS if c in table])
    rows = table.assign(config=[SweepConfig(
        model=row.model, train_per_class=int(row.param_train_per_class), learning_rate=float(row.param_learning_rate),
        lora_r=int(row.param_lora_r), lora_alpha=int(row.param_lora_alpha),
        lora_dropout=float(row.param_lora_dropout), num_train_epochs=float(row.param_num_train_epochs),
        seed=int(row.param_seed)) for row in table.itertuples()])
    rows = rows[rows["param_data_variant"].fillna("clean") == "clean"]
    for column, source in RESULT_COLUMNS.items():
        rows[column] = pd.to_numeric(rows[source], errors="coerce") if source in rows else float("nan")
    rows["config_key"] = rows["config"].map(repr)
    sizes = rows.groupby(rows["config"].map(curve_of), sort=False)["train_size"].transform("nunique")
    rows = rows[sizes >= 3].drop_duplicates("config_key")
    curves = rows["config"].map(curve_of)
    common = rows.groupby("train_size")["config"].agg(lambda c: c.map(curve_of).nunique()) == curves.nunique()
    return rows[rows["train_size"].isin(common[common].index)].reset_index(drop=True)


def replay(rows: pd.DataFrame, level: float) -> dict[str, float]:
    """The stopping rule at ``level`` over the revealed grid, and its regret against the full grid."""
    strata = int((rows["train_size"] / rows["config"].map(lambda c: c.train_per_class)).median())
    effective_batch = int(pd.to_numeric(rows["param_effective_batch_size"]).median())
    revealed: list[int] = []
    by_config = {config: index for index, config in rows["config"].items()}

    def run_level(jobs: Sequence[tuple]) -> list:
        revealed.extend(by_config[job[0]] for job in jobs)
        return list(jobs)

    task = str(rows["task"].iloc[0])
    _, status = run_by_forecast([(config,) for config in rows["config"]], run_level, lambda: rows.loc[revealed],
                                {"forecast_interval_level": level}, task, strata, effective_batch)
    skipped = {repr(entry["config"]): entry for entry in status["skipped"]}
    configs = dict(zip(rows["config_key"], rows["config"], strict=True))
    regret = stopping_regret(rows, skipped, configs, strata, effective_batch) if skipped else None
    saved = 1 - status["trained_steps"] / status["planned_steps"]
    return {"level": level, "skipped_runs": len(skipped), "steps_saved_share": saved,
            "regret_points": regret["regret_points"] if regret else 0.0,
            "oracle_regret_points": regret["oracle_regret_points"] if regret else 0.0,
            "skipped_forecast_coverage": regret["skipped_forecast_coverage"] if regret else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levels", nargs="*", type=float, default=[0.5, 0.7, 0.8, 0.9],
                        help="forecast interval levels to replay (default 0.5 0.7 0.8 0.9)")
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/predictor.md")
    args = parser.parse_args()
    table = tracking.runs_table()
    sections = []
    for data, group in table.groupby([c for c in ONE_SWEEP if c in table], dropna=False):
        rows = grid_rows(group)
        if rows["config"].map(curve_of).nunique() < 2:
            continue  # one curve has nothing to be stopped against
        title = (f"{dict(zip(ONE_SWEEP, data, strict=False))}: {len(rows)} runs, "
                 f"{rows['config'].map(curve_of).nunique()} curves, sizes "
                 f"{sorted(rows['train_size'].unique().astype(int).tolist())}")
        replayed = pd.DataFrame([replay(rows, level) for level in args.levels])
        print(f"\n{title}")
        print(replayed.round(3).to_string(index=False))
        sections.append(markdown(title, replayed))
    if args.write_docs:
        command = shlex.join(["python", "benchmarks/replay_forecast_stopping.py", *sys.argv[1:]])
        body = "\n\n".join(sections) or "No finished grid with two curves of three sizes or more in the store."
        print("wrote", write_section("docs/predictor.md", "replay_forecast_stopping", body + "\n\n" + stamp(command)))


def markdown(title: str, replayed: pd.DataFrame) -> str:
    """One grid's replay as a Markdown table."""
    lines = [f"{title}.", "", "| interval level | runs skipped | steps saved | regret (test points) | oracle regret | "
             "skipped runs inside their interval |", "|---|---|---|---|---|---|"]
    for row in replayed.itertuples(index=False):
        coverage = "—" if row.skipped_forecast_coverage != row.skipped_forecast_coverage else (
            f"{100 * row.skipped_forecast_coverage:.0f} %")
        lines.append(f"| {row.level:g} | {row.skipped_runs} | {100 * row.steps_saved_share:.0f} % | "
                     f"{row.regret_points:.1f} | {row.oracle_regret_points:.1f} | {coverage} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
