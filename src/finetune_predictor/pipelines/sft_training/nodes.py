"""Nodes of the sft_training pipeline."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.model_session import open_session
from finetune_predictor.tasks import build_task
from finetune_predictor.training import ADAPTER_FILES, fine_tune


def train_adapter(train: pd.DataFrame, test: pd.DataFrame, model: dict[str, Any], model_registry: dict[str, Any],
                  training: dict[str, Any], data: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Fine-tune a LoRA adapter; return its files and a training summary (loss history, checksums, cost and
    the precision and quantization the model session actually used).

    The held-out loss curve (``test_loss``) is taken on a slice of the test set's answers: the data split
    keeps no third set here, and a loss curve is read, never selected on (the test set stays the one that
    is reported; sweeps take theirs on the validation set)."""
    session = open_session(model, model_registry, "train", str(training.get("precision", "auto")))
    with tempfile.TemporaryDirectory(prefix="sft-") as workdir:
        adapter_dir, summary = fine_tune(train, session, build_task(data, train["output"]), training, Path(workdir),
                                         held_out=test, held_out_split="test")
        adapter_files = {name: (adapter_dir / name).read_bytes() for name in ADAPTER_FILES}
    return adapter_files, summary
