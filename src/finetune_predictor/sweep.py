"""Sensitivity sweeps: every configuration is its own MLflow run, nested under one sweep run.

A configuration is (base model, training size, learning rate, LoRA r/alpha/dropout, epochs, seed,
data-quality variant). Its key is a hash of the configuration and of the data it sees (train pool and
test set hashes), stored as the run tag ``sweep_config_key``:

- a configuration whose key already has a FINISHED run is skipped, and that run's results are reused;
- a run left RUNNING by a killed sweep is marked FAILED when the sweep starts again, and is retried;
- a run that raises is marked FAILED, the sweep goes on, and FAILED runs never enter a result table.

Execution is sequential by default. With ``executor: ray`` every configuration is a Ray task asking
for ``gpus_per_run`` GPUs, on a local Ray or on the cluster at ``ray_address``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune_predictor.records import CANONICAL_COLUMNS

logger = logging.getLogger(__name__)

CONFIG_KEY_TAG = "sweep_config_key"
SWEEP_TAG = "sweep_name"
EXECUTORS = ("sequential", "ray")


@dataclass(frozen=True)
class DataVariant:
    """A data-quality variant of the training subset (the test set never changes).

    ``label_noise``: share of training labels flipped; ``duplicate_rate``: share of training records
    replaced by copies of other training records; ``positive_share``: share of the positive class at the
    same total size (0.5 = balanced).
    """

    name: str = "clean"
    label_noise: float = 0.0
    duplicate_rate: float = 0.0
    positive_share: float = 0.5

    def __post_init__(self) -> None:
        for key, value, upper in (("label_noise", self.label_noise, 0.5), ("duplicate_rate", self.duplicate_rate, 0.9),
                                  ("positive_share", self.positive_share, 1.0)):
            if not 0 <= value <= upper:
                raise ValueError(f"sensitivity.data_variants.{self.name}.{key} must be in [0, {upper}], got {value}")


@dataclass(frozen=True)
class SweepConfig:
    model: str
    train_per_class: int
    learning_rate: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    num_train_epochs: float
    seed: int
    variant: DataVariant = field(default_factory=DataVariant)

    def key(self, data_fingerprint: str) -> str:
        payload = json.dumps({"config": asdict(self), "data": data_fingerprint}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def training_params(self, base: Mapping[str, Any]) -> dict[str, Any]:
        lora = {**dict(base.get("lora") or {}), "r": self.lora_r, "alpha": self.lora_alpha,
                "dropout": self.lora_dropout}
        return {**dict(base), "learning_rate": self.learning_rate, "num_train_epochs": self.num_train_epochs,
                "seed": self.seed, "lora": lora}

    def label(self) -> str:
        return (f"{self.model} | n={2 * self.train_per_class} | lr={self.learning_rate:.0e} r={self.lora_r} "
                f"a={self.lora_alpha} ep={self.num_train_epochs:g} | {self.variant.name} | seed={self.seed}")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def expand_grid(sensitivity: Mapping[str, Any], default_model: str) -> list[SweepConfig]:
    """Every combination of the sweep's axes, in a stable order (smallest sizes first)."""
    known = {"executor", "ray_address", "gpus_per_run", "models", "train_per_class", "learning_rates", "lora",
             "num_train_epochs", "seeds", "data_variants", "test_per_class", "output_dir", "evaluation_batch_size",
             "meta_features"}
    unknown = sorted(set(sensitivity) - known)
    if unknown:
        raise ValueError(f"Unknown sensitivity setting(s) {unknown}; known: {sorted(known)}")
    loras = [dict(item) for item in _as_list(sensitivity.get("lora") or [{"r": 8, "alpha": 32, "dropout": 0.1}])]
    variants = [DataVariant(**dict(item)) for item in _as_list(sensitivity.get("data_variants") or [{}])]
    sizes = sorted(int(size) for size in _as_list(sensitivity["train_per_class"]))
    configs = [
        SweepConfig(model=str(model), train_per_class=size, learning_rate=float(lr), lora_r=int(lora.get("r", 8)),
                    lora_alpha=int(lora.get("alpha", 32)), lora_dropout=float(lora.get("dropout", 0.1)),
                    num_train_epochs=float(epochs), seed=int(seed), variant=variant)
        for variant, model, size, lr, lora, epochs, seed in itertools.product(
            variants, _as_list(sensitivity.get("models") or [default_model]), sizes,
            _as_list(sensitivity["learning_rates"]), loras, _as_list(sensitivity.get("num_train_epochs", 3)),
            _as_list(sensitivity.get("seeds", [42])))
    ]
    if not configs:
        raise ValueError("The sensitivity sweep has no configurations: every axis needs at least one value")
    return configs


def apply_variant(train: pd.DataFrame, variant: DataVariant, labels: list[str], seed: int,
                  pool: pd.DataFrame | None = None) -> pd.DataFrame:
    """The training subset degraded as the variant says, deterministically from ``seed``.

    ``positive_share`` re-draws the classes from ``pool`` (the nested candidates) at the same total.
    """
    rng = np.random.default_rng(seed + 7919)
    out = train.copy()
    if variant.positive_share != 0.5:
        if pool is None:
            raise ValueError("positive_share needs the candidate pool")
        total = len(out)
        n_positive = round(total * variant.positive_share)
        parts = []
        for label, count in ((labels[0], n_positive), (labels[1], total - n_positive)):
            candidates = pool[pool["output"] == label]
            if len(candidates) < count:
                raise ValueError(f"data variant {variant.name!r} needs {count} examples of {label!r}, "
                                 f"only {len(candidates)} exist")
            parts.append(candidates.head(count))
        out = pd.concat(parts).sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)
    if variant.duplicate_rate > 0:
        n = round(len(out) * variant.duplicate_rate)
        targets = rng.choice(len(out), size=n, replace=False)
        keep = np.setdiff1d(np.arange(len(out)), targets)
        sources = rng.choice(keep, size=n, replace=True)
        copies = out.iloc[sources].copy()
        copies["id"] = [f"{i}#dup{k}" for k, i in enumerate(copies["id"])]
        out = pd.concat([out.iloc[keep], copies]).reset_index(drop=True)
    if variant.label_noise > 0:
        n = round(len(out) * variant.label_noise)
        flip = rng.choice(len(out), size=n, replace=False)
        other = {labels[0]: labels[1], labels[1]: labels[0]}
        out.loc[flip, "output"] = out.loc[flip, "output"].map(other)
    return out[CANONICAL_COLUMNS]


# --- MLflow bookkeeping ----------------------------------------------------------------------------------


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def existing_runs(experiment_id: str, key: str) -> list[Any]:
    return _client().search_runs([experiment_id], filter_string=f"tags.{CONFIG_KEY_TAG} = '{key}'")


def mark_crashed_runs_failed(experiment_id: str, key: str, current_parent_run_id: str | None = None) -> int:
    """A RUNNING run for this key at sweep start belongs to a sweep that was killed: mark it FAILED.

    Its parent sweep run died with it (kedro-mlflow never got to end it), so that parent is marked FAILED
    too, unless it is the sweep now running.
    """
    crashed = [run for run in existing_runs(experiment_id, key) if run.info.status == "RUNNING"]
    for run in crashed:
        _client().set_tag(run.info.run_id, "sweep_failure", "interrupted: found RUNNING when the sweep restarted")
        _client().set_terminated(run.info.run_id, status="FAILED")
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if parent_id and parent_id != current_parent_run_id:
            parent = _client().get_run(parent_id)
            if parent.info.status == "RUNNING":
                _client().set_tag(parent_id, "sweep_failure",
                                  f"interrupted: its child run {run.info.run_id} was found RUNNING at restart")
                _client().set_terminated(parent_id, status="FAILED")
    return len(crashed)


def finished_run(experiment_id: str, key: str) -> Any | None:
    runs = [run for run in existing_runs(experiment_id, key) if run.info.status == "FINISHED"]
    return max(runs, key=lambda run: run.info.end_time or 0) if runs else None


def _log_metrics(run_id: str, metrics: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = []
    for key, value in metrics.items():
        for item in value if isinstance(value, list) else [value]:
            if math.isfinite(float(item["value"])):
                entries.append(Metric(key, float(item["value"]), now, int(item.get("step", 0))))
    for start in range(0, len(entries), 900):
        _client().log_batch(run_id, metrics=entries[start:start + 900])


def _log_params(run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str("" if value is None else value)[:6000]) for key, value in params.items()]
    for start in range(0, len(items), 90):
        _client().log_batch(run_id, params=items[start:start + 90])


# --- one configuration -----------------------------------------------------------------------------------


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
    meta_features: dict[str, Any] | None = None


def run_configuration(config: SweepConfig, key: str, train: pd.DataFrame, test: pd.DataFrame,
                      split_summary: dict[str, Any], baseline: dict[str, Any], context: SweepContext,
                      run_body: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration inside its own MLflow child run; return its result row.

    The child run is ended FAILED (and the error re-raised) when anything goes wrong, so only runs that
    completed are ever FINISHED.
    """
    import mlflow

    mlflow.set_tracking_uri(context.tracking_uri)
    tags = {CONFIG_KEY_TAG: key, SWEEP_TAG: context.sweep_name, "mlflow.runName": config.label()}
    if context.parent_run_id:
        tags["mlflow.parentRunId"] = context.parent_run_id
    run = _client().create_run(context.experiment_id, tags=tags, run_name=config.label())
    run_id = run.info.run_id
    try:
        row = (run_body or train_and_evaluate)(config, key, train, test, split_summary, baseline, context, run_id)
    except BaseException as error:
        _client().set_tag(run_id, "sweep_failure", f"{type(error).__name__}: {error}"[:5000])
        _client().set_terminated(run_id, status="FAILED")
        raise
    _client().set_terminated(run_id, status="FINISHED")
    return row


def train_and_evaluate(config: SweepConfig, key: str, train: pd.DataFrame, test: pd.DataFrame,
                       split_summary: dict[str, Any], baseline: dict[str, Any], context: SweepContext,
                       run_id: str) -> dict[str, Any]:
    """The body of a configuration's run: the same fine-tune and evaluation code as mini_test100."""
    from finetune_predictor.evaluation import metrics_of, predict
    from finetune_predictor.run_record import build_run_metrics, build_run_params
    from finetune_predictor.tasks import build_task
    from finetune_predictor.training import fine_tune

    model = {**context.model, "name": config.model}
    training = config.training_params(context.training)
    run_dir = Path(context.output_dir) / key
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    adapter_dir, training_summary = fine_tune(train, model, context.model_registry, training, context.data, run_dir)
    started = time.perf_counter()
    predictions = predict(test, build_task(context.data), model, context.evaluation, adapter_dir=str(adapter_dir),
                          registry=context.model_registry)
    inference_s = time.perf_counter() - started
    finetuned = metrics_of(predictions, build_task(context.data))
    split = {**split_summary, "train_size": len(train), "train_sha256": _frame_sha(train)}
    params = build_run_params(split, training_summary, model, training, context.data)
    params.pop("run_name", None)
    params.update({"sweep_name": context.sweep_name, "sweep_config_key": key, "data_variant": config.variant.name,
                   "label_noise": config.variant.label_noise, "duplicate_rate": config.variant.duplicate_rate,
                   "positive_share": config.variant.positive_share, "train_per_class": config.train_per_class})
    metrics = build_run_metrics(training_summary, baseline, finetuned)
    metrics["inference_runtime_s"] = {"value": inference_s, "step": 0}
    predictions_path = run_dir / "finetuned_predictions.jsonl"
    predictions.to_json(predictions_path, orient="records", lines=True)
    (run_dir / "metrics.json").write_text(json.dumps({"baseline": baseline, "finetuned": finetuned}, indent=2))
    _log_params(run_id, params)
    _log_metrics(run_id, metrics)
    client = _client()
    client.log_artifacts(run_id, str(adapter_dir), "adapter")
    client.log_artifact(run_id, str(predictions_path), "predictions")
    client.log_artifact(run_id, str(run_dir / "metrics.json"))
    if context.meta_features is not None:
        from finetune_predictor.meta_features import log_meta_features_for_run

        log_meta_features_for_run(run_id, config, train, model, training, context)
    return {"run_id": run_id, "artifact_dir": str(run_dir.resolve())}


def _frame_sha(frame: pd.DataFrame) -> str:
    from finetune_predictor.records import content_sha256

    return content_sha256(frame)


def result_row(config: SweepConfig, key: str, run: Any) -> dict[str, Any]:
    """One row of the experiment summary, read back from the FINISHED MLflow run (nothing typed in)."""
    metrics, params = run.data.metrics, run.data.params
    row: dict[str, Any] = {
        "config_key": key, "run_id": run.info.run_id, "model": config.model,
        "train_size": 2 * config.train_per_class, "train_per_class": config.train_per_class,
        "learning_rate": config.learning_rate, "lora_r": config.lora_r, "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout, "num_train_epochs": config.num_train_epochs, "seed": config.seed,
        "data_variant": config.variant.name, "label_noise": config.variant.label_noise,
        "duplicate_rate": config.variant.duplicate_rate, "positive_share": config.variant.positive_share,
        "dataset": params.get("dataset"), "train_sha256": params.get("train_sha256"),
        "test_sha256": params.get("test_sha256"),
        "train_time_s": metrics.get("train_runtime_s"), "inference_time_s": metrics.get("inference_runtime_s"),
        "peak_memory_mb": metrics.get("train_peak_memory_mb"),
        "artifact_uri": run.info.artifact_uri,
    }
    for name in ("accuracy", "f1_macro", "auc", "parse_failure_rate"):
        row[f"baseline_{name}"] = metrics.get(f"baseline_{name}")
        row[f"finetuned_{name}"] = metrics.get(f"finetuned_{name}")
    row["accuracy_gain"] = metrics.get("accuracy_gain")
    row.update({key_: value for key_, value in metrics.items() if key_.startswith("mf_")})
    return row


# --- the whole sweep -------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    results: pd.DataFrame  # one row per FINISHED configuration (reused or new)
    status: dict[str, Any]  # counts: total, reused, ran, failed, interrupted_marked_failed; failures


def _absolute_tracking_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _experiment_and_parent() -> tuple[str, str | None]:
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id, active.info.run_id
    experiment = mlflow.set_experiment("finetune_predictor")
    return experiment.experiment_id, None


def prepare_data(data: dict[str, Any], sizes: list[int], test_per_class: Any) -> tuple[
        dict[int, pd.DataFrame], pd.DataFrame, pd.DataFrame, dict[str, Any], str]:
    """Nested training subsets per size, the one fixed test set, the candidate pool and a data fingerprint."""
    from finetune_predictor.pipelines.data_engineering.nodes import load_task_records, split_train_test
    from finetune_predictor.records import content_sha256

    records, _rejects, read_summary = load_task_records(data)
    params = {**data, "test_per_class": test_per_class}
    subsets: dict[int, pd.DataFrame] = {}
    test, summary = None, None
    for size in sorted(sizes):
        train, test_k, summary = split_train_test(records, read_summary, {**params, "train_per_class": size})
        if test is not None and not test_k.equals(test):
            raise AssertionError("the test set changed with the training size")
        subsets[size], test = train, test_k
    # The candidates for class-share variants: beyond the largest subset, still disjoint from the test set.
    pool = records[~records["id"].isin(set(test["id"]))]
    pool = pool[CANONICAL_COLUMNS].sample(frac=1.0, random_state=int(data.get("seed", 42))).reset_index(drop=True)
    fingerprint = hashlib.sha256((content_sha256(records[CANONICAL_COLUMNS]) + summary["test_sha256"]).encode()
                                 ).hexdigest()[:16]
    return subsets, test, pool, summary, fingerprint


def run_sweep(sensitivity: dict[str, Any], data: dict[str, Any], model: dict[str, Any],
              model_registry: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any],
              sweep_name: str = "sensitivity") -> SweepOutcome:
    """Run (or resume) every configuration of the sweep; return the FINISHED runs' result rows."""
    import mlflow

    from finetune_predictor.evaluation import metrics_of, predict
    from finetune_predictor.tasks import build_task

    executor = str(sensitivity.get("executor", "sequential"))
    if executor not in EXECUTORS:
        raise ValueError(f"sensitivity.executor must be one of {EXECUTORS}, got {executor!r}")
    configs = expand_grid(sensitivity, model["name"])
    labels = build_task(data).candidates()
    test_per_class = sensitivity.get("test_per_class", data.get("test_per_class"))
    subsets, test, pool, split_summary, fingerprint = prepare_data(
        data, sorted({c.train_per_class for c in configs}), test_per_class)
    experiment_id, parent_run_id = _experiment_and_parent()
    context = SweepContext(
        sweep_name=sweep_name, experiment_id=experiment_id, parent_run_id=parent_run_id,
        tracking_uri=_absolute_tracking_uri(mlflow.get_tracking_uri()),
        output_dir=str(Path(sensitivity.get("output_dir") or "data/06_models/sweeps").resolve()),
        data=data, model=model, model_registry=model_registry, training=training,
        evaluation={**evaluation, "batch_size": int(sensitivity.get("evaluation_batch_size")
                                                    or evaluation.get("batch_size", 16))},
        meta_features=sensitivity.get("meta_features"),
    )
    status: dict[str, Any] = {"total": len(configs), "reused": 0, "ran": 0, "failed": 0,
                              "interrupted_marked_failed": 0, "failures": []}
    pending = []
    keys = {config: config.key(fingerprint) for config in configs}
    for config in configs:
        status["interrupted_marked_failed"] += mark_crashed_runs_failed(experiment_id, keys[config], parent_run_id)
        previous = finished_run(experiment_id, keys[config])
        if previous is None:
            pending.append(config)
            continue
        status["reused"] += 1
        if context.meta_features is not None and not any(k.startswith("mf_") for k in previous.data.metrics):
            # Features asked for after the run finished: add them to that run instead of retraining.
            from finetune_predictor.meta_features import log_meta_features_for_run

            train = apply_variant(subsets[config.train_per_class], config.variant, labels, config.seed, pool)
            log_meta_features_for_run(previous.info.run_id, config, train, {**model, "name": config.model},
                                      config.training_params(training), context)
            status["features_added"] = status.get("features_added", 0) + 1
    logger.info("Sweep %s: %d configurations, %d already finished, %d to run (%s)", sweep_name, len(configs),
                status["reused"], len(pending), executor)
    baselines: dict[str, dict[str, Any]] = {}
    for name in sorted({config.model for config in pending}):
        baseline_model = {**model, "name": name}
        baselines[name] = metrics_of(predict(test, build_task(data), baseline_model, context.evaluation,
                                             registry=model_registry), build_task(data))
    jobs = []
    for config in pending:
        train = apply_variant(subsets[config.train_per_class], config.variant, labels, config.seed, pool)
        jobs.append((config, keys[config], train, test, split_summary, baselines[config.model], context))
    execute = _execute_ray if executor == "ray" else _execute_sequential
    for config, error in execute(jobs, sensitivity):
        if error is None:
            status["ran"] += 1
        else:
            status["failed"] += 1
            status["failures"].append({"config": config.label(), "error": error})
    rows = []
    for config in configs:
        run = finished_run(experiment_id, keys[config])
        if run is not None:
            rows.append(result_row(config, keys[config], run))
    return SweepOutcome(pd.DataFrame(rows), status)


def _execute_sequential(jobs: list[tuple[Any, ...]],
                        sensitivity: Mapping[str, Any]) -> list[tuple[SweepConfig, str | None]]:
    outcomes = []
    for index, job in enumerate(jobs, start=1):
        config = job[0]
        logger.info("Sweep run %d/%d: %s", index, len(jobs), config.label())
        try:
            run_configuration(*job)
        except Exception as error:
            logger.error("Sweep run %s failed: %s\n%s", config.label(), error, traceback.format_exc(limit=3))
            outcomes.append((config, f"{type(error).__name__}: {error}"))
        else:
            outcomes.append((config, None))
    return outcomes


def _execute_ray(jobs: list[tuple[Any, ...]], sensitivity: Mapping[str, Any]) -> list[tuple[SweepConfig, str | None]]:
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
    outcomes = []
    for config, ref in refs:
        try:
            ray.get(ref)
        except Exception as error:
            logger.error("Sweep run %s failed on Ray: %s", config.label(), error)
            outcomes.append((config, f"{type(error).__name__}: {error}"[:2000]))
        else:
            outcomes.append((config, None))
    return outcomes
