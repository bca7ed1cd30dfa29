"""The run record and its life in MLflow, in one place.

Every fine-tune (a ``mini_test100`` run or one configuration of a sweep) is described by a
:class:`RunRecord`: a name, flat params and metrics. The params come in three parts:

- ``configuration``: what defines the fine-tune apart from its seed (data, size, model, hyperparameters,
  the precision and quantization it actually ran with). Runs whose configuration hashes alike are seed
  replicates: the hash is logged as the param ``replicate_key``, and the predictor reads it back;
- ``seed``;
- provenance: where the run came from and what it produced (hashes, device, engine, truncation).

This module builds the record, logs it to a run (the active one, or a nested child it opens and ends),
finds runs by their sweep key, and reads finished runs back as the predictor's table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import DEFAULT_TASK, TASK_TYPES

logger = logging.getLogger(__name__)

CONFIG_KEY_TAG = "sweep_config_key"
SWEEP_TAG = "sweep_name"
REPLICATE_KEY = "replicate_key"
FEATURE_PREFIX = "mf_"
EXPERIMENT_NAME = "finetune_predictor"
_MAX_PARAM_LENGTH = 6000
# A run on unaltered data: the same configuration params a sweep's clean variant logs, so a mini_test100
# run and a sweep run of one configuration share their replicate_key.
CLEAN_VARIANT = {"data_variant": "clean", "label_noise": 0.0, "duplicate_rate": 0.0, "positive_share": 0.5}


@dataclass
class RunRecord:
    """One fine-tune as MLflow stores it. ``metrics`` values are floats or ``[(value, step), ...]``."""

    name: str
    configuration: dict[str, Any]
    seed: int
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def replicate_key(self) -> str:
        """The same for runs that differ only in their seed."""
        payload = json.dumps(self.configuration, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def params(self) -> dict[str, Any]:
        return {**self.configuration, "seed": self.seed, **self.provenance, REPLICATE_KEY: self.replicate_key}


def dataset_label(source: str) -> str:
    """``bundled-synthetic-news`` or a data file's stem: short enough for a run name."""
    return source if "/" not in source and "." not in source else Path(source).stem


def run_name(model_name: str, dataset: str, train_size: int, settings: TrainingSettings,
             variant: str = "clean") -> str:
    """The one run-name format, read side by side in the MLflow UI: model | data | size | config | seed."""
    lora = settings.lora
    variant_part = "" if variant == "clean" else f" | {variant}"
    return (f"{model_name.rstrip('/').split('/')[-1]} | {dataset_label(dataset)} | n={train_size} | "
            f"lr={settings.learning_rate:.0e} r={lora.r} a={lora.alpha} ep={settings.num_train_epochs:g}"
            f"{variant_part} | seed={settings.seed}")


def _joined(modules: Any) -> str:
    return modules if isinstance(modules, str) else ",".join(modules)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def build_run_record(split_summary: Mapping[str, Any], training_summary: Mapping[str, Any],
                     metrics: Mapping[str, Any], model: Mapping[str, Any], training: Mapping[str, Any],
                     data: Mapping[str, Any], variant: Mapping[str, Any] | None = None) -> RunRecord:
    """The record of one fine-tune from its split, training summary and evaluation metrics."""
    settings = TrainingSettings.from_params(dict(training))
    lora = settings.lora
    variant = dict(variant or CLEAN_VARIANT)
    configuration = {
        "model_name": model["name"], "task": data.get("task", "binary_classification"),
        "dataset": split_summary["source"], "dataset_family": split_summary.get("family"),
        "test_dataset": split_summary["test_source"], "test_sha256": split_summary["test_sha256"],
        "train_size": split_summary["train_size"], "test_size": split_summary["test_size"],
        "learning_rate": settings.learning_rate, "lora_r": lora.r, "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_target_modules": _joined(training_summary.get("lora_target_modules", lora.target_modules)),
        "num_train_epochs": settings.num_train_epochs, "max_steps": settings.max_steps,
        "effective_batch_size": settings.effective_batch_size, "max_length": model.get("max_length", 512),
        "precision": training_summary["precision"],
        "quantization_actual": training_summary.get("quantization_actual", "none"),
        **variant,
    }
    provenance = {
        "model_source": training_summary["model_source"], "device": training_summary["device"],
        "quantization_requested": training_summary.get("quantization_requested", "none"),
        "engine": metrics["finetuned"].get("engine", "hf"),
        "records_truncated": training_summary.get("records_truncated", 0),
        "test_records_truncated": metrics["finetuned"].get("records_truncated", 0),
        "train_sha256": split_summary["train_sha256"],
        "adapter_sha256": training_summary["adapter_sha256"]["adapter_model.safetensors"],
    }
    name = run_name(model["name"], split_summary["source"], split_summary["train_size"], settings,
                    variant["data_variant"])
    return RunRecord(name, configuration, settings.seed, provenance,
                     run_metrics(training_summary, metrics["baseline"], metrics["finetuned"], metrics.get("classical"),
                                 metrics.get("validation")))


def run_metrics(training_summary: Mapping[str, Any], baseline: Mapping[str, Any], finetuned: Mapping[str, Any],
                classical: Mapping[str, Any] | None = None,
                validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The loss curve by step, cost, and every finite scalar of the evaluations: the base model, the
    fine-tuned model and the cheap classical baseline on the test set (``classical_primary``, ``classical_accuracy``,
    ``classical_f1_macro``, ``classical_auc``), and the fine-tuned model on a validation set
    (``validation_primary``, the figure sweeps select configurations on)."""
    history = training_summary["loss_history"]
    metrics: dict[str, Any] = {
        "train_loss": [(h["loss"], int(h["step"])) for h in history],
        "train_grad_norm": [(h["grad_norm"], int(h["step"])) for h in history if _finite(h["grad_norm"])],
        "train_runtime_s": training_summary["train_runtime_s"],
        "train_peak_memory_mb": training_summary["peak_memory_mb"],
    }
    for prefix, values in (("baseline", baseline), ("finetuned", finetuned), ("classical", classical or {}),
                           ("validation", validation or {})):
        metrics.update({f"{prefix}_{key}": float(value) for key, value in values.items() if _finite(value)})
    if "accuracy" in finetuned and "accuracy" in baseline:
        metrics["accuracy_gain"] = finetuned["accuracy"] - baseline["accuracy"]
    if "primary" in finetuned and "primary" in baseline:
        metrics["primary_gain"] = finetuned["primary"] - baseline["primary"]
    return metrics


# --- logging to MLflow ----------------------------------------------------------------------------------


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def log_metrics(run_id: str, metrics: Mapping[str, Any]) -> None:
    """Finite metrics only (a NaN is a feature that could not be measured, not a value); MLflow's
    ``log_batch`` splits large batches itself."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = []
    for key, value in metrics.items():
        for item, step in value if isinstance(value, list) else [(value, 0)]:
            if _finite(item):
                entries.append(Metric(key, float(item), now, int(step)))
    _client().log_batch(run_id, metrics=entries)


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    _client().log_batch(run_id, params=[Param(key, str("" if value is None else value)[:_MAX_PARAM_LENGTH])
                                        for key, value in params.items()])


def log_record(run_id: str, record: RunRecord) -> None:
    """Name the run and log the record's params and metrics."""
    _client().set_tag(run_id, "mlflow.runName", record.name)
    log_params(run_id, record.params)
    log_metrics(run_id, record.metrics)


def run_metric(run_id: str, name: str) -> float | None:
    return _client().get_run(run_id).data.metrics.get(name)


def active_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


@contextmanager
def child_run(experiment_id: str, parent_run_id: str | None, name: str,
              tags: Mapping[str, str]) -> Iterator[str]:
    """A run nested under ``parent_run_id``; MLflow ends it FINISHED, or FAILED when the body raises
    (the error is also kept as the tag ``run_failure``)."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True, parent_run_id=parent_run_id,
                          tags=dict(tags)) as run:
        try:
            yield run.info.run_id
        except BaseException as error:
            mlflow.set_tag("run_failure", f"{type(error).__name__}: {error}"[:5000])
            raise


# --- finding runs again ----------------------------------------------------------------------------------


def runs_with_key(experiment_id: str, key: str) -> list[Any]:
    return _client().search_runs([experiment_id], filter_string=f"tags.{CONFIG_KEY_TAG} = '{key}'")


def mark_interrupted_runs_failed(experiment_id: str, key: str, current_parent_run_id: str | None = None) -> int:
    """A RUNNING run for this key at sweep start belongs to a sweep that was killed: mark it FAILED.

    Its parent sweep run died with it (kedro-mlflow never got to end it), so that parent is marked FAILED
    too, unless it is the sweep now running.
    """
    client = _client()
    crashed = [run for run in runs_with_key(experiment_id, key) if run.info.status == "RUNNING"]
    for run in crashed:
        client.set_tag(run.info.run_id, "run_failure", "interrupted: found RUNNING when the sweep restarted")
        client.set_terminated(run.info.run_id, status="FAILED")
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if parent_id and parent_id != current_parent_run_id and client.get_run(parent_id).info.status == "RUNNING":
            client.set_tag(parent_id, "run_failure",
                           f"interrupted: its child run {run.info.run_id} was found RUNNING at restart")
            client.set_terminated(parent_id, status="FAILED")
    return len(crashed)


def finished_run(experiment_id: str, key: str) -> Any | None:
    runs = [run for run in runs_with_key(experiment_id, key) if run.info.status == "FINISHED"]
    return max(runs, key=lambda run: run.info.end_time or 0) if runs else None


def _fill_task_indicators(table: pd.DataFrame) -> None:
    """``mf_task_<type>`` for runs whose features were logged before the indicators existed: the run's task
    is known, so its indicators are too (runs without any feature stay without)."""
    has_features = table[[c for c in table.columns if c.startswith(FEATURE_PREFIX)]].notna().any(axis=1)
    for name in TASK_TYPES:
        column = f"{FEATURE_PREFIX}task_{name}"
        known = (table["task"] == name).astype(float).where(has_features)
        table[column] = table[column].fillna(known) if column in table else known


def runs_table(experiment_name: str = EXPERIMENT_NAME) -> pd.DataFrame:
    """FINISHED fine-tune runs (with a fine-tuned primary metric), one row each: metrics, the configuration's
    params, ``task``, ``dataset_family``, ``model`` and ``replicate_key``, as the run record logged them.
    Classification runs logged before the primary metric existed take their accuracy as ``*_primary``."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"MLflow experiment {experiment_name!r} does not exist at {mlflow.get_tracking_uri()}")
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    for side in ("baseline", "finetuned", "validation", "classical"):
        primary, accuracy = f"metrics.{side}_primary", f"metrics.{side}_accuracy"
        if accuracy in runs:
            runs[primary] = runs[primary].fillna(runs[accuracy]) if primary in runs else runs[accuracy]
    if runs.empty or "metrics.finetuned_primary" not in runs:
        return pd.DataFrame()
    runs = runs[runs["metrics.finetuned_primary"].notna()].reset_index(drop=True)
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]]
    params = runs[[c for c in runs.columns if c.startswith("params.")]]
    table = pd.concat([runs[["run_id"]], metrics.rename(columns=lambda c: c.removeprefix("metrics.")),
                       params.rename(columns=lambda c: "param_" + c.removeprefix("params."))], axis=1)
    table["dataset"] = table.get("param_dataset")
    table["model"] = table.get("param_model_name")
    table["task"] = table["param_task"].fillna(DEFAULT_TASK) if "param_task" in table else DEFAULT_TASK
    _fill_task_indicators(table)
    table["dataset_family"] = table.get("param_dataset_family")
    table[REPLICATE_KEY] = table.get(f"param_{REPLICATE_KEY}")
    unkeyed = table[REPLICATE_KEY].isna() if REPLICATE_KEY in table else pd.Series(True, index=table.index)
    if unkeyed.any():
        logger.warning("%d runs predate the run record's replicate_key / dataset_family: each counts as its own "
                       "configuration and family", int(unkeyed.sum()))
        table.loc[unkeyed, REPLICATE_KEY] = table.loc[unkeyed, "run_id"]
        table["dataset_family"] = table["dataset_family"].fillna(table["dataset"])
    return table


# --- reusing a baseline: the base model's predictions of an earlier run with the same key --------------------

BASELINE_KEY = "baseline_key"
BASELINE_REUSED = "baseline_reused"
BASELINE_SOURCE = "baseline_source_run_id"
BASELINE_ARTIFACT = "predictions/baseline_predictions.jsonl"


def finished_baseline_run(key: str) -> Any | None:
    """The latest FINISHED run of any experiment on this tracking store whose record has the param
    ``baseline_key = key``. The param is logged with the run record at the end of a run, so a run that
    failed, or stopped before its record, is never a source."""
    client = _client()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, filter_string=f"params.{BASELINE_KEY} = '{key}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.end_time DESC"], max_results=5)
    return runs[0] if runs else None


def load_baseline_predictions(run: Any) -> tuple[pd.DataFrame, str] | None:
    """The baseline predictions artifact of ``run`` and the run that computed them (a run that reused its
    baseline names its own source); None when the artifact is gone or unreadable."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=BASELINE_ARTIFACT)
        frame = pd.read_json(local, orient="records", lines=True, dtype=False)
    except Exception as error:  # a deleted artifact or an unreachable store: compute the baseline again
        logger.warning("Run %s has baseline_key but its baseline predictions could not be read (%s): the baseline "
                       "is computed again", run.info.run_id, error)
        return None
    source = run.data.params.get(BASELINE_SOURCE) or run.info.run_id
    return frame, source
