"""Nodes of the evaluation pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor import tracking
from finetune_predictor.modeling.classical import classical_metrics
from finetune_predictor.modeling.evaluation import baseline_predictions, metrics_of, predict
from finetune_predictor.modeling.model_session import open_session
from finetune_predictor.pipelines.evaluation import plots
from finetune_predictor.tasks import build_task
from finetune_predictor.tasks.base import label_key, label_roles


def predict_baseline(test: pd.DataFrame, model: dict[str, Any], model_registry: dict[str, Any], precision: str,
                     evaluation: dict[str, Any], data: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predictions of the base model without adapter, in the model session the fine-tune used, and where
    they came from: reused from an earlier FINISHED run with the same ``baseline_key`` (same model
    content, test set, task and evaluation settings) when ``evaluation.reuse_baseline`` allows, else
    computed here."""
    session = open_session(model, model_registry, "evaluate", precision)
    run_id = tracking.active_run_id()  # kedro-mlflow's run, which logs these predictions and the record
    return baseline_predictions(test, build_task(data, test["output"]), session, evaluation,
                                tracked=run_id is not None, run_id=run_id or "")


def predict_finetuned(test: pd.DataFrame, adapter_dir: str, model: dict[str, Any], model_registry: dict[str, Any],
                      precision: str, evaluation: dict[str, Any], data: dict[str, Any]) -> pd.DataFrame:
    """Predictions of the base model with the trained adapter, on the same (possibly 4-bit) base it was
    trained on."""
    session = open_session(model, model_registry, "evaluate", precision)
    return predict(test, build_task(data, test["output"]), session, evaluation, adapter_dir=adapter_dir)


def score_classical_baseline(train: pd.DataFrame, test: pd.DataFrame, data: dict[str, Any]) -> dict[str, Any]:
    """The task's cheap baseline (TF-IDF + logistic regression for classification) on the same training
    subset, scored on the same test set."""
    task = build_task(data, train["output"])
    return classical_metrics(train, test, task, int(data.get("seed", 42)))


def compute_metrics(baseline_predictions: pd.DataFrame, finetuned_predictions: pd.DataFrame,
                    classical: dict[str, Any], train: pd.DataFrame, data: dict[str, Any]) -> dict[str, Any]:
    """Metrics of the base model, the fine-tuned model and the cheap classical baseline on the same test set;
    the task (a structured task's schema) comes from the training targets."""
    if baseline_predictions["id"].tolist() != finetuned_predictions["id"].tolist():
        raise ValueError("Baseline and fine-tuned predictions cover different test records")
    task = build_task(data, train["output"])
    return {"baseline": metrics_of(baseline_predictions, task), "finetuned": metrics_of(finetuned_predictions, task),
            "classical": classical}


def comparison_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Baseline vs fine-tuned (and the classical TF-IDF classifier where it has the metric), one row per
    scalar metric, per-class rows by label name only (the role names, ``f1_positive``, are for comparing
    runs in MLflow and would repeat each row here)."""
    baseline, finetuned, classical = metrics["baseline"], metrics["finetuned"], metrics.get("classical") or {}
    labels = list(finetuned.get("confusion_labels") or [])
    aliases = set(label_roles(labels).values()) | {"positive", "negative"} if labels else set()
    aliases -= {label_key(label) for label in labels}
    rows = [
        {"metric": key, "baseline": baseline[key], "classical": classical.get(key), "finetuned": finetuned[key],
         "delta": finetuned[key] - baseline[key]}
        for key, value in finetuned.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key in baseline
        and key.rsplit("_", 1)[-1] not in aliases
    ]
    # People read this table: 0.8 - 0.5 shows as 0.3, not 0.30000000000000004.
    return pd.DataFrame(rows).round(4)


def plot_confusion_matrices(metrics: dict[str, Any]) -> Figure:
    return plots.confusion_matrices(metrics["baseline"], metrics["finetuned"])


def plot_training_loss(training_summary: dict[str, Any]) -> Figure:
    return plots.training_loss(training_summary["loss_history"])


def plot_metric_comparison(metrics: dict[str, Any]) -> Figure:
    return plots.metric_comparison(metrics["baseline"], metrics["finetuned"], metrics.get("classical"))


def build_run_record(split_summary: dict[str, Any], training_summary: dict[str, Any], metrics: dict[str, Any],
                     model: dict[str, Any], training: dict[str, Any], data: dict[str, Any],
                     baseline_provenance: dict[str, Any]) -> tracking.RunRecord:
    """The run's record (name, params, metrics) for MLflow, with where its baseline came from."""
    record = tracking.build_run_record(split_summary, training_summary, metrics, model, training, data)
    record.provenance.update(baseline_provenance)
    return record
