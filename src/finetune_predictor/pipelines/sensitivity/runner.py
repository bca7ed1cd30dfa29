"""Running a sweep: plan -> resume -> execute -> collect.

Every configuration is its own MLflow run nested under the sweep's run. Its key (:meth:`SweepConfig.key`,
given by :func:`planning.plan`) hashes the configuration, the exact data it sees and every resolved setting
that can change a result, and is stored as the run tag ``sweep_config_key``:

- a configuration whose key already has a FINISHED run is skipped, and that run's results are reused;
- a run left RUNNING by a killed sweep is marked FAILED when the sweep starts again, and is retried: its
  fine-tune resumes from the configuration's last checkpoint (``checkpoints.py``), and the new run names
  the one it supersedes;
- a run that raises is ended FAILED by MLflow, the sweep goes on, and FAILED runs never enter a result.

One configuration's run, end to end, is :func:`configuration_run.run_configuration`. Execution is sequential by
default. With ``executor: ray`` every configuration is a Ray task asking for ``gpus_per_run`` GPUs, on a local
Ray or on the cluster at ``ray_address``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from finetune_predictor import tracking
from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling.model_session import keep_base_models
from finetune_predictor.pipelines.sensitivity.configuration_run import (
    Baseline,
    baseline_metrics,
    log_meta_features,
    run_configuration,
)
from finetune_predictor.pipelines.sensitivity.grid import SweepConfig
from finetune_predictor.pipelines.sensitivity.halving import STRATEGIES, run_by_forecast, stopping_regret
from finetune_predictor.pipelines.sensitivity.planning import SweepContext, SweepData, plan, sweep_context
from finetune_predictor.redaction import redact
from finetune_predictor.settings_schema import TrainingSettings

logger = logging.getLogger(__name__)

EXECUTORS = ("sequential", "ray")


@dataclass
class SweepOutcome:
    results: pd.DataFrame  # one row per FINISHED configuration (reused or new)
    status: dict[str, Any]  # counts: total, reused, ran, failed, interrupted_marked_failed; failures


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


def execute_sequential(jobs: list[tuple[Any, ...]], sensitivity: Mapping[str, Any],
                       context: SweepContext) -> list[tuple[SweepConfig, str | None]]:
    """One configuration after another in this process; a failed one is logged and the sweep goes on."""
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
