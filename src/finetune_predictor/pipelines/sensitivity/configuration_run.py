"""One configuration of a sweep, end to end: its MLflow child run (claimed, so a second sweep on the same store
waits for it), what it is given logged at its start, the same fine-tune, evaluation and run record as
mini_test100, and its meta-features; with the base model's baseline that every configuration of a model
compares with.

A configuration's folder is named by its key and keeps its training checkpoints until its run is complete: a
run killed before then resumes from its last checkpoint when the sweep runs again.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor import tracking
from finetune_predictor.data.records import content_sha256
from finetune_predictor.modeling import checkpoints
from finetune_predictor.modeling.classical import classical_metrics
from finetune_predictor.modeling.evaluation import baseline_predictions, metrics_of, predict
from finetune_predictor.modeling.hardware import release_accelerator_memory
from finetune_predictor.modeling.model_session import keep_base_models, open_session
from finetune_predictor.modeling.training import fine_tune
from finetune_predictor.pipelines.sensitivity.grid import SweepConfig
from finetune_predictor.pipelines.sensitivity.planning import SweepContext
from finetune_predictor.prediction.meta_features import ProbeSettings, compute_meta_features
from finetune_predictor.redaction import install_filter

# The sub-folder of a configuration's folder that keeps its training checkpoints until its run is complete.
CHECKPOINT_FOLDER = "checkpoints"


@dataclass
class Baseline:
    """The base model on the sweep's test set: its predictions, their metrics, and where they came from
    (``baseline_key``, ``baseline_reused``, ``baseline_source_run_id``)."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]
    provenance: dict[str, Any]


def baseline_metrics(models: set[str], test: pd.DataFrame, context: SweepContext) -> dict[str, Baseline]:
    """The base model on the fixed test set, once per model: reused from any earlier FINISHED run with the
    same ``baseline_key`` (a mini_test100 run or another sweep's configuration), else computed here."""
    import mlflow

    mlflow.set_tracking_uri(context.tracking_uri)
    task = context.task
    precision = str(context.training.get("precision", "auto"))
    baselines = {}
    for name in sorted(models):
        session = open_session({**context.model, "name": name}, context.model_registry, "evaluate", precision)
        # Each configuration's run logs the predictions and names itself their source (_baseline_provenance).
        predictions, provenance = baseline_predictions(test, task, session, context.evaluation, tracked=True)
        baselines[name] = Baseline(predictions, metrics_of(predictions, task), provenance)
    return baselines


def run_configuration(config: SweepConfig, key: str, train: pd.DataFrame, test: pd.DataFrame,
                      validation: pd.DataFrame, baseline: Baseline, context: SweepContext) -> dict[str, Any]:
    """Train and evaluate one configuration inside its own MLflow child run (ended FAILED on error)."""
    import mlflow

    mlflow.set_tracking_uri(context.tracking_uri)
    tracking.use_http_request_defaults()  # a Ray worker on another machine has its own environment
    keep_base_models()  # once per process: a Ray worker keeps its base model for its next configuration
    install_filter()  # a Ray worker's own log handlers mask credentials too (its output reaches the console)
    tags = {tracking.CONFIG_KEY_TAG: key, tracking.SWEEP_TAG: context.sweep_name}
    with (tracking.tracking_server_errors(f"running the configuration {context.run_name(config)!r}"),
          tracking.configuration_claim(context.experiment_id, key, context.output_dir),  # a second sweep waits
          tracking.child_run(context.experiment_id, context.parent_run_id, context.run_name(config), tags) as run_id):
        tracking.refuse_if_claimed_first(context.experiment_id, key, run_id)
        log_run_start(run_id, config, key, train, test, validation, context)
        return train_and_evaluate(config, key, train, test, validation, baseline, context, run_id)


def log_run_start(run_id: str, config: SweepConfig, key: str, train: pd.DataFrame, test: pd.DataFrame,
                  validation: pd.DataFrame, context: SweepContext) -> None:
    """What a configuration's run is given, logged before it trains (an interrupted run keeps it): the
    configuration its settings and data fix, with the names and values its run record logs at the end; the
    table tags; the training, test and validation sets as MLflow dataset inputs."""
    model, training = context.model_params(config), config.training_params(context.training)
    split = {**context.split_summary, "train_size": len(train), "train_sha256": content_sha256(train)}
    configuration = {**tracking.settings_configuration(model, training, context.data, config.variant.as_params()),
                     **tracking.split_configuration(split)}
    tracking.log_params(run_id, {**configuration, "seed": config.seed, "train_sha256": split["train_sha256"],
                                 "sweep_name": context.sweep_name, tracking.CONFIG_KEY_TAG: key,
                                 "train_per_class": config.train_per_class})
    tracking.set_tags(run_id, tracking.run_tags(configuration, config.seed))
    for frame, suffix, digest in ((train, "train", split["train_sha256"]), (test, "test", split["test_sha256"]),
                                  (validation, "validation", split.get("validation_sha256"))):
        if len(frame):
            context_name = "training" if suffix == "train" else suffix
            tracking.log_dataset(run_id, frame, split["source"], suffix, context_name, digest)


def train_and_evaluate(config: SweepConfig, key: str, train: pd.DataFrame, test: pd.DataFrame,
                       validation: pd.DataFrame, baseline: Baseline, context: SweepContext,
                       run_id: str) -> dict[str, Any]:
    """The body of a configuration's run: the same session, fine-tune, evaluation and run record as
    mini_test100."""
    import mlflow

    model, training = context.model_params(config), config.training_params(context.training)
    task = context.task
    run_dir = Path(context.output_dir) / key
    checkpoint_dir = _clear_run_dir(run_dir)
    session = open_session(model, context.model_registry, "train", str(training.get("precision", "auto")))
    # The held-out loss curve on the validation set (what configurations are selected on); without one, on
    # the test answers as test_loss, which nothing selects on.
    held_out, split_name = (validation, "validation") if len(validation) else (test, "test")
    adapter_dir, training_summary = fine_tune(train, session, task, training, run_dir, held_out=held_out,
                                              held_out_split=split_name, checkpoint_dir=checkpoint_dir)
    started = time.perf_counter()
    predictions = predict(test, task, session.with_purpose("evaluate"), context.evaluation, str(adapter_dir))
    inference_s = time.perf_counter() - started
    metrics = {"baseline": baseline.metrics, "finetuned": metrics_of(predictions, task),
               "classical": classical_metrics(train, test, task, config.seed),
               "validation": _validation_metrics(validation, task, session, context, str(adapter_dir))}
    split = {**context.split_summary, "train_size": len(train), "train_sha256": content_sha256(train)}
    record = tracking.build_run_record(split, training_summary, metrics, model, training, context.data,
                                       variant=config.variant.as_params())
    record.provenance.update({"sweep_name": context.sweep_name, tracking.CONFIG_KEY_TAG: key,
                              "train_per_class": config.train_per_class, **_baseline_provenance(baseline, run_id)})
    record.metrics["inference_runtime_s"] = inference_s
    tracking.log_record(run_id, record)
    predictions.to_json(run_dir / "finetuned_predictions.jsonl", orient="records", lines=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    mlflow.log_artifacts(str(adapter_dir), "adapter")
    # Full precision, as the catalog writes them (pandas' default of 10 decimals can turn near-ties into ties).
    baseline.predictions.to_json(run_dir / "baseline_predictions.jsonl", orient="records", lines=True,
                                 double_precision=15)
    mlflow.log_artifact(str(run_dir / "finetuned_predictions.jsonl"), "predictions")
    mlflow.log_artifact(str(run_dir / "baseline_predictions.jsonl"), "predictions")  # what a later run reuses
    mlflow.log_artifact(str(run_dir / "metrics.json"))
    if context.meta_features is not None:
        log_meta_features(run_id, config, train, context)
    checkpoints.discard(checkpoint_dir)  # the run is complete: killed before this, it resumes at its last step
    release_accelerator_memory()
    return {"run_id": run_id, "artifact_dir": str(run_dir.resolve())}


def _clear_run_dir(run_dir: Path) -> Path:
    """Empty the configuration's folder of what an earlier attempt wrote, except its training checkpoints
    (the folder is named by the configuration's key): the folder they stay in, for the fine-tune to resume."""
    checkpoint_dir = run_dir / CHECKPOINT_FOLDER
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in run_dir.iterdir():
        if path.is_dir() and path != checkpoint_dir:
            shutil.rmtree(path, ignore_errors=True)
        elif not path.is_dir():
            path.unlink(missing_ok=True)
    return checkpoint_dir


def _baseline_provenance(baseline: Baseline, run_id: str) -> dict[str, Any]:
    """A baseline computed by this sweep has each configuration's run as its source (each logs it)."""
    reused = baseline.provenance[tracking.BASELINE_REUSED] == "true"
    return {**baseline.provenance, tracking.BASELINE_SOURCE: baseline.provenance[tracking.BASELINE_SOURCE]
            if reused else run_id}


def _validation_metrics(validation: pd.DataFrame, task: Any, session: Any, context: SweepContext,
                        adapter_dir: str) -> dict[str, Any]:
    """The fine-tuned model on the validation set (label scoring only): what the report selects on."""
    if validation.empty:
        return {}
    evaluation = {**context.evaluation, "generation": False}
    return metrics_of(predict(validation, task, session.with_purpose("evaluate"), evaluation, adapter_dir), task)


def log_meta_features(run_id: str, config: SweepConfig, train: pd.DataFrame, context: SweepContext) -> dict:
    """The configuration's ``mf_*`` features on its run, with ``mf_cost_ratio`` = feature seconds / the run's
    training seconds; probes run in the configuration's own model session."""
    settings = dict(context.meta_features or {})
    training = config.training_params(context.training)
    session = open_session(context.model_params(config), context.model_registry, "probe",
                           str(training.get("precision", "auto")))
    cache_dir = Path(settings.get("cache_dir") or Path(context.output_dir) / "meta_features_cache")
    features = compute_meta_features(train, session, context.task, training,
                                     ProbeSettings.from_params(settings), cache_dir)
    train_seconds = tracking.run_metric(run_id, "train_runtime_s")
    if train_seconds:
        features["mf_cost_ratio"] = features["mf_feature_seconds"] / train_seconds
    tracking.log_metrics(run_id, features)
    return features
