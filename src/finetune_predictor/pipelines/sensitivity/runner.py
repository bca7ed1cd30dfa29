"""Running a sweep: plan -> resume -> execute -> collect.

Every configuration is its own MLflow run nested under the sweep's run. Its key
(:meth:`SweepConfig.key`) hashes the configuration, the exact data it sees and every resolved setting
that can change a result, and is stored as the run tag ``sweep_config_key``:

- a configuration whose key already has a FINISHED run is skipped, and that run's results are reused;
- a run left RUNNING by a killed sweep is marked FAILED when the sweep starts again, and is retried: its
  fine-tune resumes from the configuration's last checkpoint (``checkpoints.py``), and the new run names
  the one it supersedes;
- a run that raises is ended FAILED by MLflow, the sweep goes on, and FAILED runs never enter a result.

Execution is sequential by default. With ``executor: ray`` every configuration is a Ray task asking
for ``gpus_per_run`` GPUs, on a local Ray or on the cluster at ``ray_address``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor import tracking
from finetune_predictor.data import task_data
from finetune_predictor.data.records import content_sha256
from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling import checkpoints
from finetune_predictor.modeling.classical import classical_metrics
from finetune_predictor.modeling.evaluation import baseline_predictions, metrics_of, predict
from finetune_predictor.modeling.hardware import release_accelerator_memory
from finetune_predictor.modeling.model_session import keep_base_models, open_session
from finetune_predictor.modeling.training import fine_tune
from finetune_predictor.pipelines.sensitivity.grid import SweepConfig, apply_variant, expand_grid
from finetune_predictor.pipelines.sensitivity.halving import STRATEGIES, run_by_forecast, stopping_regret
from finetune_predictor.prediction.meta_features import ProbeSettings, compute_meta_features
from finetune_predictor.redaction import install_filter, redact
from finetune_predictor.settings_schema import UNKEYED_TRAINING_SETTINGS, TrainingSettings
from finetune_predictor.tasks import TASK_TYPES, Task, build_task, task_type

logger = logging.getLogger(__name__)

EXECUTORS = ("sequential", "ray")
# Whether a stored baseline may be reused changes where the base model's predictions come from, not what
# they are (the baseline key holds everything that changes them): it must not re-key finished sweeps.
UNKEYED_EVALUATION_SETTINGS = ("reuse_baseline",)
# A classification task's generation budget is derived from its labels' token counts (evaluation.max_new_tokens).
# The sub-folder of a configuration's folder that keeps its training checkpoints until its run is complete.
CHECKPOINT_FOLDER = "checkpoints"
DERIVED_BUDGET = "longest_label+end_of_turn"


@dataclass
class SweepData:
    """The sweep's catalogued data: nested subsets (column ``train_per_class``), the fixed test set, the
    validation set that configurations are selected on, the candidate pool of class-share variants, and
    the split summary with every subset's hash."""

    subsets: pd.DataFrame
    test: pd.DataFrame
    validation: pd.DataFrame
    pool: pd.DataFrame
    split_summary: dict[str, Any]
    # Source variants' subsets, by the variant's source settings (JSON): drawn by add_sources.
    sources: dict[str, pd.DataFrame] = field(default_factory=dict)

    def fingerprint(self, config: SweepConfig) -> str:
        """The data one configuration sees: its own subset and the test set (and the pool it re-draws
        classes from); adding a size to the sweep leaves the other sizes' fingerprints as they were."""
        parts = [self.split_summary["subset_sha256"][str(config.train_per_class)], self.split_summary["test_sha256"],
                 str(self.split_summary.get("validation_sha256"))]
        if config.variant.positive_share != 0.5:
            parts.append(content_sha256(self.pool))
        if config.variant.source is not None:
            parts.append(content_sha256(self.source_subset(config)))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def add_sources(self, configs: list[SweepConfig], data: dict[str, Any], task: Task) -> None:
        """Draw the training subsets of every source variant once (all its sizes), before planning: the
        resume key hashes what each configuration will train on."""
        sizes: dict[str, set[int]] = {}
        names: dict[str, str] = {}
        for config in configs:
            if config.variant.source is not None:
                sizes.setdefault(config.variant.source, set()).add(config.train_per_class)
                names[config.variant.source] = config.variant.name
        held_out = [frame for frame in (self.test, self.validation) if len(frame)]
        for source, wanted in sizes.items():
            if source not in self.sources:
                self.sources[source] = task_data.source_subsets(
                    data, json.loads(source), held_out, task.candidates(), sorted(wanted),
                    f"sensitivity.data_variants.{names[source]}.source")

    def source_subset(self, config: SweepConfig) -> pd.DataFrame:
        if config.variant.source not in self.sources:
            raise KeyError(f"data variant {config.variant.name!r}: its source was not drawn (SweepData.add_sources)")
        return task_data.subset(self.sources[config.variant.source], config.train_per_class)

    def task(self, data: dict[str, Any]) -> Task:
        """The sweep's task; a structured task's schema is inferred from the training candidates."""
        return build_task(data, pd.concat([self.subsets["output"], self.pool["output"]]))

    def training_set(self, config: SweepConfig, task: Task) -> pd.DataFrame:
        base = (self.source_subset(config) if config.variant.source is not None
                else task_data.subset(self.subsets, config.train_per_class))
        return apply_variant(base, config.variant, task, config.seed, self.pool)


@dataclass
class SweepContext:
    """What every configuration of one sweep shares (picklable, for Ray workers)."""

    sweep_name: str
    experiment_id: str
    parent_run_id: str | None
    tracking_uri: str
    output_dir: str
    data: dict[str, Any]
    model: dict[str, Any]
    model_registry: dict[str, Any]
    training: dict[str, Any]
    evaluation: dict[str, Any]
    split_summary: dict[str, Any]
    task: Task  # built once from data and the training candidates, handed to every configuration
    meta_features: dict[str, Any] | None = None
    wait_for_others_s: float = 12 * 3600.0  # sensitivity.wait_for_others_h: how long a live claim is waited for

    def model_params(self, config: SweepConfig) -> dict[str, Any]:
        return {**self.model, "name": config.model}

    def run_name(self, config: SweepConfig) -> str:
        return config.label(self.split_summary["source"], self.training, len(self.task.candidates() or [None]))


@dataclass
class SweepOutcome:
    results: pd.DataFrame  # one row per FINISHED configuration (reused or new)
    status: dict[str, Any]  # counts: total, reused, ran, failed, interrupted_marked_failed; failures


def settings_fingerprint(model: Mapping[str, Any], training: Mapping[str, Any], evaluation: Mapping[str, Any],
                         data: Mapping[str, Any]) -> dict[str, Any]:
    """Every resolved setting that can change a result, for the resume key. The grid's own axes are in the
    configuration; the data's content is in the data fingerprint."""
    name = task_type(dict(data))
    # Only the keys the task reads: a new setting of another task must not re-key every finished sweep.
    task_keys = ("task", "label_positive", "label_negative", "labels", "instruction",
                 *{"qa": ("qa",), "structured": ("schema",)}.get(name, ()))
    # The model's name is the configuration's own axis (sensitivity.models): the default name must not
    # re-key a sweep that lists its models explicitly.
    model_settings = {key: value for key, value in model.items() if key != "name"}
    # The generation budget as resolved (null = the task's own, or derived from the labels), so that the same
    # budget keys the same.
    budget = evaluation.get("max_new_tokens")
    own = TASK_TYPES[name].max_new_tokens
    resolved = {**{key: value for key, value in evaluation.items() if key not in UNKEYED_EVALUATION_SETTINGS},
                "max_new_tokens": int(budget) if budget is not None else own if own is not None else DERIVED_BUDGET}
    # The held-out loss curve's settings never change the trained adapter or its results.
    training_settings = {key: value for key, value in training.items() if key not in UNKEYED_TRAINING_SETTINGS}
    return {"model": model_settings, "training": training_settings, "evaluation": resolved,
            "task": {key: data.get(key) for key in task_keys if key in data}}


# --- plan -----------------------------------------------------------------------------------------------------


def plan(sensitivity: Mapping[str, Any], sweep_data: SweepData, context: SweepContext) -> dict[SweepConfig, str]:
    """Every configuration of the grid with its resume key."""
    configs = expand_grid(sensitivity, context.model["name"])
    sweep_data.add_sources(configs, context.data, context.task)
    missing = sorted({c.train_per_class for c in configs} - {int(s) for s in sweep_data.split_summary["subset_sha256"]})
    if missing:
        raise ValueError(f"sensitivity.train_per_class {missing} have no prepared subset: re-run prepare_sweep_data")
    settings = settings_fingerprint(context.model, context.training, context.evaluation, context.data)
    return {config: config.key(sweep_data.fingerprint(config), settings) for config in configs}


# --- resume ---------------------------------------------------------------------------------------------------


def resume(keys: dict[SweepConfig, str], sweep_data: SweepData, context: SweepContext,
           status: dict[str, Any]) -> tuple[list[SweepConfig], list[SweepConfig]]:
    """Mark interrupted runs FAILED, reuse FINISHED ones (adding features they lack); return what to run and what
    another live process is running (a second sweep on the same store), to wait for."""
    pending, elsewhere = [], []
    task = context.task
    for config, key in keys.items():
        status["interrupted_marked_failed"] += tracking.mark_interrupted_runs_failed(
            context.experiment_id, key, context.parent_run_id)
        previous = tracking.finished_run(context.experiment_id, key)
        if previous is None:
            running = tracking.live_claim(context.experiment_id, key) is not None
            (elsewhere if running else pending).append(config)
            continue
        status["reused"] += 1
        if context.meta_features is not None and not any(k.startswith(tracking.FEATURE_PREFIX)
                                                         for k in previous.data.metrics):
            # Features asked for after the run finished: add them to that run instead of retraining.
            log_meta_features(previous.info.run_id, config, sweep_data.training_set(config, task), context)
            status["features_added"] = status.get("features_added", 0) + 1
    return pending, elsewhere


# --- execute ---------------------------------------------------------------------------------------------------


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


def execute_sequential(jobs: list[tuple[Any, ...]], sensitivity: Mapping[str, Any],
                       context: SweepContext) -> list[tuple[SweepConfig, str | None]]:
    outcomes = []
    for index, job in enumerate(jobs, start=1):
        config = job[0]
        logger.info("Sweep run %d/%d: %s", index, len(jobs), context.run_name(config))
        try:
            run_configuration(*job)
        except tracking.TrackingServerUnavailableError:
            raise  # every later configuration would fail the same way: stop with the one message
        except tracking.ConfigurationClaimedError as error:  # a second sweep's: waited for (settle_claims)
            logger.info("Sweep run %s: %s", context.run_name(config), error)
            outcomes.append((config, f"{type(error).__name__}: {error}"))
        except Exception as error:
            logger.error("Sweep run %s failed: %s\n%s", context.run_name(config), error,
                         traceback.format_exc(limit=3))
            outcomes.append((config, f"{type(error).__name__}: {error}"))
        else:
            outcomes.append((config, None))
    return outcomes


def execute_ray(jobs: list[tuple[Any, ...]], sensitivity: Mapping[str, Any],
                context: SweepContext) -> list[tuple[SweepConfig, str | None]]:
    """One Ray task per configuration, each asking for ``gpus_per_run`` GPUs."""
    try:
        import ray
    except ImportError:
        raise ImportError("sensitivity.executor=ray needs Ray: pip install -e '.[ray]'") from None
    address = sensitivity.get("ray_address") or None
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=True)
    gpus = float(sensitivity.get("gpus_per_run", 1))
    available = float(ray.cluster_resources().get("GPU", 0))
    if gpus > available:
        raise ValueError(f"sensitivity.gpus_per_run={gpus:g} but the Ray cluster at {address or 'local'} has "
                         f"{available:g} GPU(s): the tasks would wait forever. Set gpus_per_run: 0 to run on CPUs.")
    task = ray.remote(num_gpus=gpus, max_retries=0)(run_configuration)
    refs = [(job[0], task.remote(*job)) for job in jobs]
    outcomes, unavailable = [], None
    for config, ref in refs:
        try:
            ray.get(ref)
        except tracking.TrackingServerUnavailableError as error:  # Ray's error is also an instance of its cause
            unavailable = unavailable or getattr(error, "cause", error)
            outcomes.append((config, str(error)))
        except Exception as error:
            logger.error("Sweep run %s failed on Ray: %s", context.run_name(config), error)
            outcomes.append((config, f"{type(error).__name__}: {error}"[:2000]))
        else:
            outcomes.append((config, None))
    if unavailable is not None:  # after every task in flight ended: each finished or failed on its own
        raise unavailable
    return outcomes


def _run_by_forecast(jobs: list[tuple[Any, ...]], keys: dict[SweepConfig, str], execute: Any,
                     sensitivity: Mapping[str, Any], context: SweepContext, status: dict[str, Any]) -> list:
    """``sensitivity.strategy: forecast``: sizes in ascending order, curves stopped by forecast; each skipped
    configuration gets a child run tagged ``skipped_by_forecast`` with its forecast (no config key and no
    result metric, so it is never resumed from nor read as a result)."""
    by_key = {key: config for config, key in keys.items()}

    def results_so_far() -> pd.DataFrame:
        rows = collect(keys, context.experiment_id)
        return rows.assign(config=rows["config_key"].map(by_key)) if not rows.empty else rows

    strata, effective = _step_units(context)
    outcomes, forecast_status = run_by_forecast(jobs, lambda level: execute(level, sensitivity, context),
                                                results_so_far, sensitivity, context.task.name, strata, effective)
    skipped = []
    for entry in forecast_status["skipped"]:
        config, name = entry["config"], context.run_name(entry["config"])
        tags = {tracking.SKIPPED_BY_FORECAST_TAG: "true", tracking.SWEEP_TAG: context.sweep_name,
                tracking.SKIPPED_CONFIG_KEY_TAG: keys[config]}
        with tracking.child_run(context.experiment_id, context.parent_run_id, f"skipped: {name}", tags) as run_id:
            tracking.log_params(run_id, {"skipped_reason": entry["reason"], **config.variant.as_params(),
                                         "train_per_class": config.train_per_class,
                                         "learning_rate": config.learning_rate, "seed": config.seed})
            tracking.log_metrics(run_id, {f"forecast_{k}": entry[k] for k in ("predicted", "lower", "upper")})
        skipped.append({"config": name, **{k: entry[k] for k in ("predicted", "lower", "upper", "reason")}})
    status["forecast"] = {**forecast_status, "skipped": skipped}
    return outcomes


def _step_units(context: SweepContext) -> tuple[int, int]:
    """Training examples per unit of ``train_per_class`` (the labels, 1 for open tasks) and the effective batch:
    what turns a configuration into optimizer steps."""
    return len(context.task.candidates() or [None]), TrainingSettings.from_params(context.training).effective_batch_size


def _stopping_regret(keys: dict[SweepConfig, str], results: pd.DataFrame, context: SweepContext) -> dict | None:
    """Where a forecast-driven run of this sweep skipped configurations that have all run since (a grid run):
    the regret of stopping and the compute it saved (:func:`halving.stopping_regret`). Skipped runs are
    matched by their config key tag, or by run name for runs recorded before the tag existed."""
    by_name = {f"skipped: {context.run_name(config)}": key for config, key in keys.items()}
    skipped = {}
    for run in tracking.forecast_skipped_runs(context.experiment_id, context.sweep_name):
        key = run.data.tags.get(tracking.SKIPPED_CONFIG_KEY_TAG) or by_name.get(run.info.run_name)
        if key in by_name.values():
            skipped[key] = {name.removeprefix("forecast_"): value for name, value in run.data.metrics.items()}
    if results.empty or not skipped:
        return None
    return stopping_regret(results, skipped, {key: config for config, key in keys.items()}, *_step_units(context))


# --- two sweeps on one store: configurations another process runs ----------------------------------------------

CLAIM_POLL_S = 5.0


def _jobs(configs: list[SweepConfig], keys: dict[SweepConfig, str], jobs_data: dict[SweepConfig, pd.DataFrame],
          sweep_data: SweepData, baselines: dict[str, Baseline], context: SweepContext) -> list[tuple[Any, ...]]:
    """The jobs of ``configs``; each model's baseline is computed when a job first needs it (then kept)."""
    missing = {config.model for config in configs} - set(baselines)
    if missing:
        baselines.update(baseline_metrics(missing, sweep_data.test, context))
    return [(config, keys[config], jobs_data[config], sweep_data.test, sweep_data.validation,
             baselines[config.model], context) for config in configs]


def _claimed(config: SweepConfig, error: str | None, keys: dict[SweepConfig, str], context: SweepContext) -> bool:
    """Whether a configuration that did not run here was another process's (its claim, not a failure)."""
    if error is None:
        return False
    key = keys[config]
    return tracking.CLAIMED in error or tracking.finished_run(context.experiment_id, key) is not None or (
        tracking.live_claim(context.experiment_id, key) is not None)


def settle_claims(outcomes: list, elsewhere: list[SweepConfig], keys: dict[SweepConfig, str], run_here: Any,
                  context: SweepContext, status: dict[str, Any]) -> list:
    """Configurations another process runs (RUNNING there when this sweep started, or claimed first when it came
    to them; a second sweep on the same store): wait for that run to finish, so this sweep's results hold
    them too, never a second run of them. One whose process died before its run finished is run here. Returns
    the outcomes of the configurations run here."""
    waiting = list(elsewhere)
    while True:
        claimed = [config for config, error in outcomes if _claimed(config, error, keys, context)]
        outcomes = [(config, error) for config, error in outcomes if config not in claimed]
        waiting += [config for config in claimed if config not in waiting]
        if not waiting:
            return outcomes
        orphaned = await_elsewhere(waiting, keys, context, status)
        if not orphaned:
            return outcomes
        waiting, outcomes = [], outcomes + run_here(orphaned)


class OtherSweepTooSlowError(UserFacingError, RuntimeError):
    """Configurations another process claimed did not finish within ``sensitivity.wait_for_others_h``: its
    machine may be gone with its runs left RUNNING (a process on another host cannot be checked from here)."""

    def __init__(self, configs: list[SweepConfig], keys: dict[SweepConfig, str], context: SweepContext) -> None:
        runs = [claim.info.run_id for config in configs
                if (claim := tracking.live_claim(context.experiment_id, keys[config])) is not None]
        super().__init__(
            what=f"{len(configs)} configuration(s) another sweep is running did not finish within "
                 f"{context.wait_for_others_s / 3600:g} h: " + "; ".join(context.run_name(c) for c in configs),
            where=f"MLflow runs {', '.join(runs) or '(none left RUNNING)'} in experiment {context.experiment_id}",
            fix="If the machine running them is gone, mark those runs FAILED (MLflow UI, or "
                "MlflowClient().set_terminated(run_id, 'FAILED')) and run the same command again: it runs them here "
                "(resuming from their checkpoints). If it is alive but slow, raise sensitivity.wait_for_others_h. "
                "Every configuration this sweep finished is kept.")


def await_elsewhere(configs: list[SweepConfig], keys: dict[SweepConfig, str], context: SweepContext,
                    status: dict[str, Any]) -> list[SweepConfig]:
    """Poll until each configuration has a FINISHED run, or no live run any more (returned: to run here)."""
    logger.info("Sweep %s: waiting for %d configuration(s) that another process is running: %s", context.sweep_name,
                len(configs), "; ".join(context.run_name(config) for config in configs))
    waiting, orphaned, unclaimed = list(configs), [], set()
    deadline = time.monotonic() + context.wait_for_others_s
    while waiting:
        if time.monotonic() > deadline:
            raise OtherSweepTooSlowError(waiting, keys, context)
        for config in list(waiting):
            if tracking.finished_run(context.experiment_id, keys[config]) is not None:
                waiting.remove(config)
                status["finished_elsewhere"] = status.get("finished_elsewhere", 0) + 1
            elif tracking.live_claim(context.experiment_id, keys[config]) is not None:
                unclaimed.discard(config)
            elif config in unclaimed:  # no live run twice in a row: not a process about to open its run
                waiting.remove(config)
                orphaned.append(config)
            else:
                unclaimed.add(config)
        if waiting:
            time.sleep(CLAIM_POLL_S)
    if orphaned:
        logger.warning("Sweep %s: %d configuration(s) another process was running ended unfinished: run here",
                       context.sweep_name, len(orphaned))
    return orphaned


# --- collect ---------------------------------------------------------------------------------------------------


def _train_size(params: Mapping[str, Any], config: SweepConfig) -> int:
    """The run's logged training size (labels x per-class count for classification, the count for open tasks)."""
    value = params.get("train_size")
    return int(value) if value is not None else 2 * config.train_per_class


def _number(value: Any) -> float | None:
    """A numeric MLflow param (params are strings), None when absent or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def result_row(config: SweepConfig, key: str, run: Any) -> dict[str, Any]:
    """One row of the experiment summary, read back from the FINISHED MLflow run (nothing typed in)."""
    metrics, params = run.data.metrics, run.data.params
    row: dict[str, Any] = {
        "config_key": key, "run_id": run.info.run_id, "model": config.model, "task": params.get("task"),
        "train_size": _train_size(params, config), "train_per_class": config.train_per_class,
        "learning_rate": config.learning_rate, "lora_r": config.lora_r, "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout, "num_train_epochs": config.num_train_epochs, "seed": config.seed,
        **config.variant.as_params(),
        "dataset": params.get("dataset"), "dataset_family": params.get("dataset_family"),
        "train_sha256": params.get("train_sha256"), "test_sha256": params.get("test_sha256"),
        "test_size": _number(params.get("test_size")), "validation_n": metrics.get("validation_n"),
        "train_time_s": metrics.get("train_runtime_s"), "inference_time_s": metrics.get("inference_runtime_s"),
        "peak_memory_mb": metrics.get("train_peak_memory_mb"),
        "artifact_uri": run.info.artifact_uri,
    }
    for name in ("primary", "accuracy", "f1_macro", "auc", "parse_failure_rate", "exact_match", "f1",
                 "parse_rate", "schema_compliance", "field_accuracy", "key_point_coverage"):
        for prefix in ("baseline", "classical", "finetuned", "validation"):
            row[f"{prefix}_{name}"] = metrics.get(f"{prefix}_{name}")
    # Runs logged before the primary metric existed were classification runs: their primary is accuracy.
    for prefix in ("baseline", "classical", "finetuned", "validation"):
        if row[f"{prefix}_primary"] is None:
            row[f"{prefix}_primary"] = row[f"{prefix}_accuracy"]
    row["accuracy_gain"], row["primary_gain"] = metrics.get("accuracy_gain"), metrics.get("primary_gain")
    row.update({name: value for name, value in metrics.items() if name.startswith(tracking.FEATURE_PREFIX)})
    return row


def collect(keys: dict[SweepConfig, str], experiment_id: str) -> pd.DataFrame:
    rows = []
    for config, key in keys.items():
        run = tracking.finished_run(experiment_id, key)
        if run is not None:
            rows.append(result_row(config, key, run))
    return pd.DataFrame(rows)


# --- the whole sweep -------------------------------------------------------------------------------------


def _absolute_tracking_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def sweep_context(sensitivity: Mapping[str, Any], sweep_data: SweepData, data: dict[str, Any],
                  model: dict[str, Any], model_registry: dict[str, Any], training: dict[str, Any],
                  evaluation: dict[str, Any], sweep_name: str) -> SweepContext:
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        experiment_id, parent_run_id = active.info.experiment_id, active.info.run_id
    else:
        experiment_id, parent_run_id = mlflow.set_experiment(tracking.EXPERIMENT_NAME).experiment_id, None
        tracking.mark_model_training_experiment(experiment_id)
    batch_size = int(sensitivity.get("evaluation_batch_size") or evaluation.get("batch_size", 16))
    return SweepContext(
        sweep_name=sweep_name, experiment_id=experiment_id, parent_run_id=parent_run_id,
        tracking_uri=_absolute_tracking_uri(mlflow.get_tracking_uri()),
        output_dir=str(Path(sensitivity.get("output_dir") or "data/06_models/sweeps").resolve()),
        data=data, model=model, model_registry=model_registry, training=training,
        evaluation={**evaluation, "batch_size": batch_size}, split_summary=sweep_data.split_summary,
        task=sweep_data.task(data), meta_features=sensitivity.get("meta_features"),
        wait_for_others_s=3600.0 * float(sensitivity.get("wait_for_others_h", 12)),
    )


@tracking.tracking_server_errors("running a sweep")
def run_sweep(sensitivity: dict[str, Any], sweep_data: SweepData, data: dict[str, Any], model: dict[str, Any],
              model_registry: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any],
              sweep_name: str = "sensitivity") -> SweepOutcome:
    """Run (or resume) every configuration of the sweep; return the FINISHED runs' result rows. A tracking server
    that stops answering ends the sweep with one :class:`tracking.TrackingServerUnavailableError`."""
    tracking.use_http_request_defaults()
    executor = str(sensitivity.get("executor", "sequential"))
    if executor not in EXECUTORS:
        raise ValueError(f"sensitivity.executor must be one of {EXECUTORS}, got {executor!r}")
    strategy = str(sensitivity.get("strategy", "grid"))
    if strategy not in STRATEGIES:
        raise ValueError(f"sensitivity.strategy must be one of {STRATEGIES}, got {strategy!r}")
    context = sweep_context(sensitivity, sweep_data, data, model, model_registry, training, evaluation, sweep_name)
    keys = plan(sensitivity, sweep_data, context)
    jobs_data = {config: sweep_data.training_set(config, context.task) for config in keys}  # bad variants fail here
    status: dict[str, Any] = {"total": len(keys), "reused": 0, "ran": 0, "failed": 0,
                              "interrupted_marked_failed": 0, "failures": []}
    pending, elsewhere = resume(keys, sweep_data, context, status)
    logger.info("Sweep %s: %d configurations, %d already finished, %d to run, %d running in another process (%s)",
                sweep_name, len(keys), status["reused"], len(pending), len(elsewhere), executor)
    keep_base_models()  # the base model is read from disk once, not for every configuration and probe
    try:
        baselines: dict[str, Baseline] = {}

        def run_here(configs: list[SweepConfig]) -> list:
            return execute(_jobs(configs, keys, jobs_data, sweep_data, baselines, context), sensitivity, context)

        execute = execute_ray if executor == "ray" else execute_sequential
        if strategy == "forecast":
            jobs = _jobs(pending, keys, jobs_data, sweep_data, baselines, context)
            outcomes = _run_by_forecast(jobs, keys, execute, sensitivity, context, status)
        else:
            outcomes = run_here(pending)
        outcomes = settle_claims(outcomes, elsewhere, keys, run_here, context, status)
    finally:
        keep_base_models(False)
    for config, error in outcomes:
        status["ran" if error is None else "failed"] += 1
        if error is not None:
            # The sweep's status is saved and shown: an error quoting a credentialed tracking URI is masked.
            status["failures"].append({"config": context.run_name(config), "error": redact(error)})
    results = collect(keys, context.experiment_id)
    regret = _stopping_regret(keys, results, context)
    if regret is not None:
        status["stopping_regret"] = regret
    return SweepOutcome(results, status)
