"""Figures of one run (matplotlib, headless)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def confusion_matrices(baseline: dict[str, Any], finetuned: dict[str, Any]) -> Figure:
    """Baseline and fine-tuned confusion matrices; an open task (QA, structured) has none, and says so."""
    if "confusion_matrix" not in finetuned:
        figure, axis = plt.subplots(figsize=(5, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, "No confusion matrix: this task is not a classification\n(see metric_comparison.png)",
                  ha="center", va="center")
        return figure
    figure, axes = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    for axis, (title, metrics) in zip(axes, (("baseline", baseline), ("fine-tuned", finetuned)), strict=True):
        matrix = np.array(metrics["confusion_matrix"])
        labels = metrics["confusion_labels"]
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(len(labels)), labels)
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"{title}: accuracy {metrics['accuracy']:.3f}")
        for (row, col), count in np.ndenumerate(matrix):
            axis.text(col, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
    return figure


def training_loss(loss_history: list[dict[str, float]]) -> Figure:
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    steps = [h["step"] for h in loss_history]
    axis.plot(steps, [h["loss"] for h in loss_history], marker=".", linewidth=1)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss (answer tokens)")
    axis.set_title("LoRA training loss")
    axis.grid(alpha=0.3)
    return figure


def metric_comparison(baseline: dict[str, Any], finetuned: dict[str, Any],
                      classical: dict[str, Any] | None = None) -> Figure:
    """The task's headline metrics for the base model, the cheap classical baseline and the fine-tune."""
    names = [name for name in ("accuracy", "f1_macro", "auc", "gen_accuracy", "exact_match", "f1", "parse_rate",
                               "schema_compliance", "field_accuracy", "key_point_coverage") if name in finetuned]
    figure, axis = plt.subplots(figsize=(max(7, 1.3 * len(names)), 4), constrained_layout=True)
    positions = np.arange(len(names))
    series = [("baseline", baseline), ("classical", classical or {}), ("fine-tuned", finetuned)]
    for offset, (title, metrics) in zip((-0.27, 0.0, 0.27), series, strict=True):
        values = [metrics.get(name, np.nan) for name in names]
        bars = axis.bar(positions + offset, values, width=0.27, label=title)
        axis.bar_label(bars, fmt="%.2f", fontsize=8)
    axis.set_xticks(positions, names)
    axis.set_ylim(0, 1.05)
    if "accuracy" in finetuned and len(finetuned.get("confusion_labels", [])) == 2:
        axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)  # chance on a balanced binary test set
    axis.legend()
    axis.set_title("baseline, classical and fine-tuned on the fixed test set")
    return figure
