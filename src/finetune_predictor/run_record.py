"""The run record: the params and metrics every fine-tune logs to MLflow, built in one place.

Training, evaluation and (later) sweeps and probes all log through this, so the MLflow runs table
that feeds the predictor has the same columns whoever wrote the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from finetune_predictor.settings_schema import TrainingSettings


def _short_model_name(name: str) -> str:
    return name.rstrip("/").split("/")[-1]


def dataset_label(source: str) -> str:
    """``bundled-synthetic-news`` or a data file's stem: short enough for a run name."""
    return source if "/" not in source and "." not in source else Path(source).stem


def run_name(model_name: str, dataset: str, train_size: int, settings: TrainingSettings) -> str:
    """A name that reads well side by side in the MLflow UI: model | data | size | config | seed."""
    lora = settings.lora
    return (f"{_short_model_name(model_name)} | {dataset_label(dataset)} | n={train_size} | "
            f"lr={settings.learning_rate:.0e} r={lora.r} a={lora.alpha} ep={settings.num_train_epochs:g} | "
            f"seed={settings.seed}")


def build_run_params(
    split_summary: dict[str, Any], training_summary: dict[str, Any], model: dict[str, Any],
    training: dict[str, Any], data: dict[str, Any],
) -> dict[str, Any]:
    """The flat params of one fine-tune run (names chosen for the runs table, not kedro's nesting)."""
    settings = TrainingSettings.from_params(training)
    lora = settings.lora
    return {
        "run_name": run_name(model["name"], split_summary["source"], split_summary["train_size"], settings),
        "model_name": model["name"],
        "model_source": training_summary["model_source"],
        "task": data.get("task", "binary_classification"),
        "dataset": split_summary["source"],
        "test_dataset": split_summary["test_source"],
        "train_size": split_summary["train_size"],
        "test_size": split_summary["test_size"],
        "learning_rate": settings.learning_rate,
        "lora_r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_target_modules": _joined(training_summary.get("lora_target_modules", lora.target_modules)),
        "num_train_epochs": settings.num_train_epochs,
        "effective_batch_size": settings.effective_batch_size,
        "seed": settings.seed,
        "precision": training_summary["precision"],
        "device": training_summary["device"],
        "train_sha256": split_summary["train_sha256"],
        "test_sha256": split_summary["test_sha256"],
        "adapter_sha256": training_summary["adapter_sha256"]["adapter_model.safetensors"],
    }


def _joined(modules: Any) -> str:
    return modules if isinstance(modules, str) else ",".join(modules)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def build_run_metrics(
    training_summary: dict[str, Any], baseline: dict[str, Any], finetuned: dict[str, Any]
) -> dict[str, Any]:
    """Metrics in kedro-mlflow's history format: the loss curve by step, and scalar outcomes."""
    metrics: dict[str, Any] = {
        "train_loss": [{"value": h["loss"], "step": int(h["step"])} for h in training_summary["loss_history"]],
        "train_grad_norm": [{"value": h["grad_norm"], "step": int(h["step"])}
                            for h in training_summary["loss_history"] if _finite(h["grad_norm"])],
        "train_runtime_s": {"value": training_summary["train_runtime_s"], "step": 0},
        "train_peak_memory_mb": {"value": training_summary["peak_memory_mb"], "step": 0},
    }
    for prefix, values in (("baseline", baseline), ("finetuned", finetuned)):
        for key, value in values.items():
            if _finite(value):
                metrics[f"{prefix}_{key}"] = {"value": float(value), "step": 0}
    metrics["accuracy_gain"] = {"value": finetuned["accuracy"] - baseline["accuracy"], "step": 0}
    return metrics
