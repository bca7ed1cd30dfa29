"""Nodes of the predict pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from finetune_predictor.data.task_data import bundled_source, dataset_family
from finetune_predictor.prediction.predictor import predict_with_reasons, to_json


def predict_candidate(features: dict[str, float], runs_table: pd.DataFrame, card: dict[str, Any],
                      model: dict[str, Any], training: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The predicted target metric (the task's primary metric by default) with its conformal interval and the
    top SHAP reasons, printed and returned.
    The card's winning model is refitted on the runs table it was chosen on."""
    source = data.get("path") or bundled_source(data)
    answer = predict_with_reasons(runs_table, card, features, family=dataset_family(data))
    answer["candidate"] = {"model": model["name"], "data": source, "training": training}
    low, high = answer["interval"]
    print(f"\nPredicted {answer['target']}: {100 * answer['predicted']:.1f}% "
          f"[{100 * low:.1f}%, {100 * high:.1f}%] ({100 * answer['interval_level']:.0f}% conformal interval, "
          f"{answer['interval_calibration']}; {card['model']} trained on {card['training_runs']} runs)")
    for reason in answer["reasons"]:
        print(f"  {reason['feature']:<30} = {reason['value']:<12.4g} {100 * reason['shap']:+.1f} points")
    if answer["missing_features"]:
        print(f"  (missing, filled with the training median: {answer['missing_features']})")
    return to_json(answer)
