"""Nodes of the sft_training pipeline."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.hardware import choose_compute_plan
from finetune_predictor.models import load_formatter, resolve_model
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import build_task
from finetune_predictor.training import ADAPTER_FILES, build_training_rows, lora_target_modules, train_lora


def train_adapter(
    train: pd.DataFrame, model: dict[str, Any], model_registry: dict[str, Any], training: dict[str, Any],
    data: dict[str, Any],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Fine-tune a LoRA adapter; return its files and a training summary (loss history, checksums, cost)."""
    settings = TrainingSettings.from_params(training)
    plan = choose_compute_plan(settings.precision, model.get("quantization", "none"))
    resolved = resolve_model(model["name"], model.get("cache_dir"), model_registry)
    formatter = load_formatter(resolved, model)
    task = build_task(data)
    records = train.to_dict("records")
    rows = build_training_rows(formatter, records, [task.target(record) for record in records])
    with tempfile.TemporaryDirectory(prefix="sft-") as workdir:
        result = train_lora(resolved, formatter, rows, settings, plan, Path(workdir))
        adapter_files = {name: (result.adapter_dir / name).read_bytes() for name in ADAPTER_FILES}
    summary = {
        "model_name": model["name"],
        "model_path": resolved.path,
        "model_source": resolved.source,
        "device": plan.device,
        "precision": plan.precision_name,
        "precision_reason": plan.reason,
        "quantization_requested": model.get("quantization", "none"),
        "train_runtime_s": result.train_runtime_s,
        "peak_memory_mb": result.peak_memory_mb,
        "num_examples": result.num_examples,
        "num_steps": result.num_steps,
        "supervised_tokens": result.supervised_tokens,
        "adapter_sha256": result.adapter_sha256,
        "loss_history": result.loss_history,
        "effective_batch_size": settings.effective_batch_size,
        "lora_target_modules": lora_target_modules(settings.lora.target_modules, resolved.entry),
    }
    return adapter_files, summary
