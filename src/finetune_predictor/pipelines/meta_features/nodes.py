"""Nodes of the meta_features pipeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.modeling.model_session import open_session
from finetune_predictor.modeling.models import default_cache_dir
from finetune_predictor.prediction.meta_features import ProbeSettings, compute_meta_features
from finetune_predictor.tasks import build_task


def compute_candidate_features(train: pd.DataFrame, model: dict[str, Any], model_registry: dict[str, Any],
                               training: dict[str, Any], data: dict[str, Any],
                               meta_features: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """The ``mf_*`` features of this run's training set, hyperparameters and base model (cached), as a
    JSON report and as MLflow metrics of the run. Probes run in the candidate's own model session."""
    cache_dir = Path(meta_features.get("cache_dir") or default_cache_dir() / "meta_features")
    session = open_session(model, model_registry, "probe", str(training.get("precision", "auto")))
    features = compute_meta_features(train, session, build_task(data, train["output"]), training,
                                     ProbeSettings.from_params(meta_features), cache_dir)
    print("\nMeta-features:\n" + "\n".join(f"  {k:<32} {v:.6g}" for k, v in sorted(features.items())))
    # A NaN (a probe that had nothing to measure) is not logged; mf_features_missing counts them.
    return features, {key: {"value": float(value), "step": 0} for key, value in features.items()
                      if math.isfinite(value)}
