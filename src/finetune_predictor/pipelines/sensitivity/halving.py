"""The forecast-driven sweep (``sensitivity.strategy: forecast``): sizes run in ascending order; after each
size, every curve (a configuration less its size and seed) with two sizes or more is forecast at the largest
size, and a curve whose upper bound there is below the best curve's lower bound stops (successive halving by
forecast). What is skipped is said, with its forecast, and never enters a runs table as a result."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from finetune_predictor.pipelines.sensitivity.grid import SweepConfig
from finetune_predictor.prediction.learning_curve import chance_floor, eval_size_of, forecast

STRATEGIES = ("grid", "forecast")


def curve_of(config: SweepConfig) -> SweepConfig:
    """The curve a configuration belongs to: the same configuration at any size and seed."""
    return replace(config, train_per_class=0, seed=0)


def stopping_target(results: pd.DataFrame) -> str:
    """What the forecast stops curves on: the validation set's primary metric when every finished run has one,
    never the test set the report quotes (stopping is a selection); the test metric only for a sweep without a
    validation split, which the report then calls selected on test."""
    if "validation_primary" in results and len(results) and results["validation_primary"].notna().all():
        return "validation_primary"
    return "finetuned_primary"


def curves_to_stop(results: pd.DataFrame, configs: list[SweepConfig], largest_size: float, task: str | None,
                   level: float = 0.9) -> dict[SweepConfig, dict[str, Any]]:
    """The curves to stop, each with its forecast at ``largest_size`` (training examples) and the reason.

    ``results`` are the finished rows so far (``config`` column: the SweepConfig). A curve is stopped when
    its interval's upper bound at the largest size is below the best curve's lower bound there, both forecast
    from :func:`stopping_target`."""
    bands: dict[SweepConfig, dict[str, float]] = {}
    if results.empty:
        return {}
    target = stopping_target(results)
    for curve, rows in results.groupby(results["config"].map(curve_of), sort=False):
        if rows["train_size"].nunique() < 2:
            continue
        band = forecast(rows["train_size"].astype(float), rows[target].astype(float), [largest_size],
                        floor=chance_floor(task), level=level, eval_size=eval_size_of(rows, target)).iloc[0]
        bands[curve] = {"predicted": float(band["predicted"]), "lower": float(band["lower"]),
                        "upper": float(band["upper"])}
    if len(bands) < 2:
        return {}
    best_curve = max(bands, key=lambda c: bands[c]["lower"])
    best_lower = bands[best_curve]["lower"]
    alive = {curve_of(c) for c in configs}
    return {curve: {**band, "best_lower": best_lower,
                    "reason": f"forecast {target} upper bound {band['upper']:.3f} at n={largest_size:g} is below the "
                              f"best curve's lower bound {best_lower:.3f}"}
            for curve, band in bands.items() if curve in alive and band["upper"] < best_lower}


def planned_steps(config: SweepConfig, strata: int, effective_batch: int) -> int:
    """Optimizer steps a configuration costs: ceil(examples / effective batch) x epochs."""
    return math.ceil(strata * config.train_per_class / effective_batch) * math.ceil(config.num_train_epochs)


def run_by_forecast(jobs: list[tuple[Any, ...]], run_level: Callable[[list[tuple[Any, ...]]], list],
                    results_so_far: Callable[[], pd.DataFrame], sensitivity: Mapping[str, Any], task: str,
                    strata: int, effective_batch: int) -> tuple[list, dict[str, Any]]:
    """Run ``jobs`` size by size through ``run_level``; stop curves by forecast. Returns the outcomes and the
    strategy's status: skipped configurations with their forecast, planned and trained steps."""
    if not jobs:
        return [], {"strategy": "forecast", "skipped": [], "planned_steps": 0, "trained_steps": 0}
    sizes = sorted({job[0].train_per_class for job in jobs})
    largest = float(strata * sizes[-1])
    level = float(sensitivity.get("forecast_interval_level", 0.9))
    stopped: dict[SweepConfig, dict[str, Any]] = {}
    outcomes, skipped = [], []
    for size in sizes:
        level_jobs = [job for job in jobs if job[0].train_per_class == size]
        runnable = [job for job in level_jobs if curve_of(job[0]) not in stopped]
        skipped += [{"config": job[0], **stopped[curve_of(job[0])]} for job in level_jobs if job not in runnable]
        outcomes += run_level(runnable)
        pending = [job[0] for job in jobs if job[0].train_per_class > size]
        stopped.update(curves_to_stop(results_so_far(), pending, largest, task, level))
    budget = step_budget([job[0] for job in jobs], [entry["config"] for entry in skipped], strata, effective_batch)
    return outcomes, {"strategy": "forecast", "skipped": skipped, **budget}


def step_budget(configs: list[SweepConfig], skipped: list[SweepConfig], strata: int,
                effective_batch: int) -> dict[str, int]:
    """The optimizer steps a sweep planned (every configuration) and trained (less what was skipped)."""
    planned = sum(planned_steps(config, strata, effective_batch) for config in configs)
    return {"planned_steps": planned,
            "trained_steps": planned - sum(planned_steps(config, strata, effective_batch) for config in skipped)}


def stopping_regret(results: pd.DataFrame, skipped: Mapping[str, Mapping[str, float]],
                    configs: Mapping[str, SweepConfig], strata: int, effective_batch: int) -> dict[str, Any] | None:
    """What stopping by forecast cost, once the full grid has run (a grid run of the same sweep trained what a
    forecast-driven run skipped). ``results``: the grid's finished rows (``config_key``); ``skipped``: the
    forecast of each configuration the forecast-driven run skipped, by config key; ``configs``: every
    configuration of the grid, by key.

    At the largest size, the curve each would have chosen is picked the way the report picks (on
    :func:`stopping_target`, mean over seeds), and the regret is the test primary of the grid's choice minus that
    of the forecast-driven run's choice, in points (0: stopping lost nothing; the oracle regret picks on test
    instead). Also: the compute saved (planned vs trained steps) and how the skipped forecasts compare with what
    those configurations then scored."""
    done = results[results["config_key"].isin(skipped)] if len(results) else results
    if not skipped or done.empty:
        return None
    target = stopping_target(results)
    largest = results[results["train_size"] == results["train_size"].max()].copy()
    largest["curve"] = largest["config_key"].map(lambda key: repr(curve_of(configs[key])))  # a plain label
    kept = largest[~largest["config_key"].isin(skipped)]

    def choice(rows: pd.DataFrame, on: str) -> tuple[Any, float]:
        means = rows.groupby("curve")[list(dict.fromkeys([on, "finetuned_primary"]))].mean()
        best = means[on].idxmax()
        return best, float(means.loc[best, "finetuned_primary"])

    grid_curve, grid_test = choice(largest, target)
    forecast_curve, forecast_test = choice(kept, target) if len(kept) else (None, float("nan"))
    oracle_gap = choice(largest, "finetuned_primary")[1] - (choice(kept, "finetuned_primary")[1] if len(kept)
                                                            else float("nan"))
    actual = done.set_index("config_key")[target]
    inside = [skipped[key]["lower"] <= actual[key] <= skipped[key]["upper"] for key in actual.index]
    budget = step_budget(list(configs.values()), [configs[key] for key in skipped if key in configs], strata,
                         effective_batch)
    return {"target": target, "largest_size": float(largest["train_size"].iloc[0]),
            "same_choice": bool(grid_curve == forecast_curve),
            "regret_points": 100 * (grid_test - forecast_test), "oracle_regret_points": 100 * oracle_gap,
            "grid_choice_test": grid_test, "forecast_choice_test": forecast_test,
            **budget,
            "skipped_runs": len(skipped), "skipped_trained_since": len(done),
            "skipped_forecast_mae_points": float(100 * np.mean([abs(skipped[k]["predicted"] - actual[k])
                                                                 for k in actual.index])),
            "skipped_forecast_coverage": float(np.mean(inside)),
            "skipped_best_actual": float(actual.max())}
