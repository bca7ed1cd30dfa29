"""Nodes of the sensitivity pipeline."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor import sweep_report
from finetune_predictor.sweep import run_sweep


def run_sensitivity_sweep(sensitivity: dict[str, Any], data: dict[str, Any], model: dict[str, Any],
                          model_registry: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any],
                          preflight_passed: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Run or resume every configuration (each its own MLflow child run); return the finished runs' rows
    (twice: JSON lines and CSV) and the sweep's status counts."""
    outcome = run_sweep(sensitivity, data, model, model_registry, training, evaluation)
    print(f"\nSweep: {outcome.status['total']} configurations: {outcome.status['ran']} ran, "
          f"{outcome.status['reused']} reused, {outcome.status['failed']} failed "
          f"({outcome.status['interrupted_marked_failed']} interrupted runs marked FAILED)")
    return outcome.results, outcome.results, outcome.status


def analyse_sweep(results: pd.DataFrame) -> dict[str, Any]:
    """Knee, gain per doubling, best model and configuration, data-quality effects."""
    return json.loads(json.dumps(sweep_report.analyse(results), default=float))


def plot_accuracy_vs_size(results: pd.DataFrame) -> Figure:
    return sweep_report.plot_accuracy_vs_size(results)


def plot_accuracy_vs_learning_rate(results: pd.DataFrame) -> Figure:
    return sweep_report.plot_accuracy_vs_hyperparameter(results, "learning_rate")


def plot_accuracy_vs_lora_r(results: pd.DataFrame) -> Figure:
    return sweep_report.plot_accuracy_vs_hyperparameter(results, "lora_r")


def plot_model_size_heatmap(results: pd.DataFrame) -> Figure:
    return sweep_report.plot_model_size_heatmap(results)


def write_reports(results: pd.DataFrame, analysis: dict[str, Any], status: dict[str, Any]) -> tuple[str, str]:
    """The Markdown report and the LaTeX fragment."""
    return sweep_report.markdown_report(results, analysis, status), sweep_report.latex_fragment(analysis)
