"""Nodes of the sensitivity pipeline."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor.data import task_data
from finetune_predictor.pipelines.sensitivity import report
from finetune_predictor.pipelines.sensitivity.grid import expand_grid
from finetune_predictor.pipelines.sensitivity.runner import SweepData, run_sweep


def sweep_data_params(sensitivity: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the sweep's own fixed test-set size (``sensitivity.test_per_class``) when it sets one."""
    test_per_class = sensitivity.get("test_per_class", data.get("test_per_class"))
    return {**data, "test_per_class": test_per_class}


def prepare_sweep_data(sensitivity: dict[str, Any], data: dict[str, Any], preflight_passed: bool) -> tuple[
        pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Every training size of the sweep as nested subsets, the one fixed test set, the validation set the
    best configuration is selected on (``sensitivity.validation_per_class``), the candidate pool of
    class-share variants, and the split summary with each subset's hash: catalogued and versioned like
    mini_test100's split."""
    sizes = sorted({config.train_per_class for config in expand_grid(sensitivity, "any")})
    params = sweep_data_params(sensitivity, data)
    records, _rejects, read_summary = task_data.load_task_records(params)
    return task_data.nested_subsets(records, read_summary, params, sizes,
                                    int(sensitivity.get("validation_per_class") or 0))


def run_sensitivity_sweep(train_subsets: pd.DataFrame, test_set: pd.DataFrame, validation_set: pd.DataFrame,
                          variant_pool: pd.DataFrame, split_summary: dict[str, Any], sensitivity: dict[str, Any],
                          data: dict[str, Any], model: dict[str, Any], model_registry: dict[str, Any],
                          training: dict[str, Any],
                          evaluation: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Run or resume every configuration (each its own MLflow child run); return the finished runs' rows
    (twice: JSON lines and CSV) and the sweep's status counts."""
    sweep_data = SweepData(train_subsets, test_set, validation_set, variant_pool, split_summary)
    outcome = run_sweep(sensitivity, sweep_data, sweep_data_params(sensitivity, data), model, model_registry,
                        training, evaluation)
    print(f"\nSweep: {outcome.status['total']} configurations: {outcome.status['ran']} ran, "
          f"{outcome.status['reused']} reused, {outcome.status['failed']} failed "
          f"({outcome.status['interrupted_marked_failed']} interrupted runs marked FAILED)")
    if "stopping_regret" in outcome.status:
        regret = outcome.status["stopping_regret"]
        print(f"Stopping by forecast (now that the full grid has run): regret {regret['regret_points']:+.1f} test "
              f"points, {1 - regret['trained_steps'] / regret['planned_steps']:.0%} of the steps saved")
    return outcome.results, outcome.results, outcome.status


def analyse_sweep(results: pd.DataFrame) -> dict[str, Any]:
    """Knee, gain per doubling, best model and configuration, data-quality effects."""
    return json.loads(json.dumps(report.analyse(results), default=float))


def plot_accuracy_vs_size(results: pd.DataFrame) -> Figure:
    return report.plot_accuracy_vs_size(results)


def plot_accuracy_vs_learning_rate(results: pd.DataFrame) -> Figure:
    return report.plot_accuracy_vs_hyperparameter(results, "learning_rate")


def plot_accuracy_vs_lora_r(results: pd.DataFrame) -> Figure:
    return report.plot_accuracy_vs_hyperparameter(results, "lora_r")


def plot_model_size_heatmap(results: pd.DataFrame) -> Figure:
    return report.plot_model_size_heatmap(results)


def write_reports(results: pd.DataFrame, analysis: dict[str, Any], status: dict[str, Any]) -> tuple[str, str]:
    """The Markdown report and the LaTeX fragment."""
    return report.markdown_report(results, analysis, status), report.latex_fragment(analysis)
