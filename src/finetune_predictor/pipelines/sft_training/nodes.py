"""Nodes of the sft_training pipeline."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.data.records import content_sha256
from finetune_predictor.modeling import checkpoints
from finetune_predictor.modeling.model_session import open_session
from finetune_predictor.modeling.training import SAVED_ADAPTER_FILES, fine_tune
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import build_task


def train_adapter(train: pd.DataFrame, test: pd.DataFrame, model: dict[str, Any], model_registry: dict[str, Any],
                  training: dict[str, Any], data: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Fine-tune a LoRA adapter; return its files and a training summary (loss history, checksums, cost and
    the precision and quantization the model session actually used).

    The held-out loss curve (``test_loss``) is taken on a slice of the test set's answers: the data split
    keeps no third set here, and a loss curve is read, never selected on (the test set stays the one that
    is reported; sweeps take theirs on the validation set).

    Checkpoints go to ``training.checkpoint_dir/<key of this configuration>``: a killed run's same command
    resumes from the last one (the summary's ``resumed_from_step``); they are deleted once the adapter is read."""
    session = open_session(model, model_registry, "train", str(training.get("precision", "auto")))
    checkpoint_dir = _checkpoint_dir(train, test, model, training, data)
    with tempfile.TemporaryDirectory(prefix="sft-") as workdir:
        adapter_dir, summary = fine_tune(train, session, build_task(data, train["output"]), training, Path(workdir),
                                         held_out=test, held_out_split="test", checkpoint_dir=checkpoint_dir)
        adapter_files = {name: (adapter_dir / name).read_bytes() for name in SAVED_ADAPTER_FILES}
    checkpoints.discard(checkpoint_dir)
    return adapter_files, summary


def _checkpoint_dir(train: pd.DataFrame, test: pd.DataFrame, model: dict[str, Any], training: dict[str, Any],
                    data: dict[str, Any]) -> Path:
    """This configuration's checkpoint folder: named by its data and settings, so the same command finds it
    (what is inside is resumed only by the same training: checkpoints.fingerprint)."""
    settings = {key: value for key, value in training.items() if key not in checkpoints.CHECKPOINT_SETTINGS}
    payload = {"train": content_sha256(train), "test": content_sha256(test), "model": model,
               "training": settings, "data": data}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(TrainingSettings.from_params(training).checkpoint_dir) / key
