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
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling.models import folder_sha256
from finetune_predictor.redaction import redact
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import DEFAULT_TASK, TASK_TYPES
from finetune_predictor.tracking.provenance import run_provenance

logger = logging.getLogger(__name__)

CONFIG_KEY_TAG = "sweep_config_key"
# A run whose fine-tune resumed an interrupted run's checkpoint: params on it, a tag on the interrupted run.
RESUMED_FROM_STEP, SUPERSEDES, SUPERSEDED_BY = "resumed_from_step", "supersedes", "superseded_by"
SWEEP_TAG = "sweep_name"
# A configuration a forecast-driven sweep skipped: a child run with its forecast, never a result. Its key is under
# its own tag (never CONFIG_KEY_TAG), so resuming never mistakes the forecast for a finished run.
SKIPPED_BY_FORECAST_TAG = "skipped_by_forecast"
SKIPPED_CONFIG_KEY_TAG = "skipped_config_key"
REPLICATE_KEY = "replicate_key"
FEATURE_PREFIX = "mf_"
EXPERIMENT_NAME = "finetune_predictor"
HOST_TAG, PID_TAG = "run_host", "run_pid"
# The MLflow UI's experiment kind: "custom_model_development" is its "Machine learning" (model training) kind.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
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
    """The one run-name format. What differs between runs comes first, so the MLflow UI's narrow name column
    tells them apart: size, hyperparameters and seed | data [| variant] | model. Nothing finds runs by their
    name (sweeps resume by the ``sweep_config_key`` tag), so the format is free to read well."""
    lora = settings.lora
    variant_part = "" if variant == "clean" else f" | {variant}"
    return (f"n={train_size} lr={settings.learning_rate:.0e} r={lora.r} a={lora.alpha} "
            f"ep={settings.num_train_epochs:g} seed={settings.seed} | {dataset_label(dataset)}{variant_part} | "
            f"{model_name.rstrip('/').split('/')[-1]}")


def _joined(modules: Any) -> str:
    return modules if isinstance(modules, str) else ",".join(modules)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def settings_configuration(model: Mapping[str, Any], training: Mapping[str, Any],
                           data: Mapping[str, Any], variant: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The part of a run's configuration that its settings alone fix: known when the run starts, logged then
    under the same names and values as the run record logs them at the end (MLflow refuses a param logged
    twice with two values)."""
    settings = TrainingSettings.from_params(dict(training))
    lora = settings.lora
    return {
        "model_name": model["name"], "task": data.get("task", "binary_classification"),
        "learning_rate": settings.learning_rate, "lora_r": lora.r, "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout, "num_train_epochs": settings.num_train_epochs, "max_steps": settings.max_steps,
        "effective_batch_size": settings.effective_batch_size, "max_length": model.get("max_length", 512),
        **dict(variant or CLEAN_VARIANT),
        # Length-grouped batches train differently: such runs are not seed twins of runs without them. Only
        # logged when on, so runs from before the setting (batches in random order) keep their replicate keys.
        **({"group_by_length": True} if settings.group_by_length else {}),
    }


def split_configuration(split_summary: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's configuration that its data split fixes (logged once the split exists)."""
    return {"dataset": split_summary["source"], "dataset_family": split_summary.get("family"),
            "test_dataset": split_summary["test_source"], "test_sha256": split_summary["test_sha256"],
            "train_size": split_summary["train_size"], "test_size": split_summary["test_size"]}


def build_run_record(split_summary: Mapping[str, Any], training_summary: Mapping[str, Any],
                     metrics: Mapping[str, Any], model: Mapping[str, Any], training: Mapping[str, Any],
                     data: Mapping[str, Any], variant: Mapping[str, Any] | None = None) -> RunRecord:
    """The record of one fine-tune from its split, training summary and evaluation metrics."""
    settings = TrainingSettings.from_params(dict(training))
    variant = dict(variant or CLEAN_VARIANT)
    configuration = {
        **settings_configuration(model, training, data, variant), **split_configuration(split_summary),
        "lora_target_modules": _joined(training_summary.get("lora_target_modules", settings.lora.target_modules)),
        "precision": training_summary["precision"],
        "quantization_actual": training_summary.get("quantization_actual", "none"),
    }
    provenance = {
        "model_source": training_summary["model_source"], "device": training_summary["device"],
        "quantization_requested": training_summary.get("quantization_requested", "none"),
        "engine": metrics["finetuned"].get("engine", "hf"),
        "records_truncated": training_summary.get("records_truncated", 0),
        "test_records_truncated": metrics["finetuned"].get("records_truncated", 0),
        "train_sha256": split_summary["train_sha256"],
        "adapter_sha256": training_summary["adapter_sha256"]["adapter_model.safetensors"],
        **resume_provenance(training_summary),
        **memory_provenance(training_summary, settings),
        **model_provenance(training_summary),
        **run_provenance(),
    }
    name = run_name(model["name"], split_summary["source"], split_summary["train_size"], settings,
                    variant["data_variant"])
    return RunRecord(name, configuration, settings.seed, provenance,
                     run_metrics(training_summary, metrics["baseline"], metrics["finetuned"], metrics.get("classical"),
                                 metrics.get("validation")))


def model_provenance(training_summary: Mapping[str, Any]) -> dict[str, Any]:
    """The base model's content hash (weights, config, tokenizer): two runs of one model name on different
    weights are different base models in the runs archive. Hashes are cached, so this reads no weights twice."""
    path = training_summary.get("model_path")
    return {"model_sha256": folder_sha256(path) if path and Path(path).is_dir() else "unknown"}


def memory_provenance(training_summary: Mapping[str, Any], settings: TrainingSettings) -> dict[str, Any]:
    """What a fine-tune trained with after any out-of-memory retry (``training.oom_fallback``): the retries,
    the rungs taken (``none``), and the micro-batch, accumulation and gradient checkpointing it actually used
    (the settings' own values are logged under ``training.*``; a 4bit rung shows in ``quantization_actual``).
    A summary from before the ladder ran with its settings."""
    return {
        "oom_retries": int(training_summary.get("oom_retries", 0)),
        "oom_fallbacks": ",".join(training_summary.get("oom_fallbacks") or []) or "none",
        "per_device_train_batch_size_actual": training_summary.get("per_device_train_batch_size_actual",
                                                                   settings.per_device_train_batch_size),
        "gradient_accumulation_steps_actual": training_summary.get("gradient_accumulation_steps_actual",
                                                                   settings.gradient_accumulation_steps),
        "gradient_checkpointing_actual": training_summary.get("gradient_checkpointing_actual",
                                                              settings.gradient_checkpointing),
    }


def run_tags(configuration: Mapping[str, Any], seed: int | None) -> dict[str, str]:
    """The tags the MLflow runs table shows as columns (task, family, n, lr, r, variant, seed), from what of
    the configuration is known; a tag not known yet is left out."""
    family = configuration.get("dataset_family") or (
        dataset_label(str(configuration["dataset"])) if configuration.get("dataset") else None)
    values = {"task": configuration.get("task"), "family": family, "n": configuration.get("train_size"),
              "lr": (f"{float(configuration['learning_rate']):g}" if configuration.get("learning_rate") is not None
                     else None),
              "r": configuration.get("lora_r"), "variant": configuration.get("data_variant"), "seed": seed}
    return {key: str(value) for key, value in values.items() if value is not None}


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
    # The held-out loss curve: ``validation_loss`` in sweeps, ``test_loss`` (on the test answers, a curve to
    # read, never selected on) in mini_test100.
    eval_history = training_summary.get("eval_loss_history") or []
    if eval_history:
        metrics[f"{training_summary.get('eval_split', 'eval')}_loss"] = [(h["loss"], int(h["step"]))
                                                                          for h in eval_history]
    for prefix, values in (("baseline", baseline), ("finetuned", finetuned), ("classical", classical or {}),
                           ("validation", validation or {})):
        metrics.update({f"{prefix}_{key}": float(value) for key, value in values.items() if _finite(value)})
    # A difference of two shares carries float noise (0.8 - 0.5 = 0.30000000000000004) that the MLflow runs
    # table shows verbatim; 12 decimals keep every digit a test-set share can have.
    if "accuracy" in finetuned and "accuracy" in baseline:
        metrics["accuracy_gain"] = round(finetuned["accuracy"] - baseline["accuracy"], 12)
    if "primary" in finetuned and "primary" in baseline:
        metrics["primary_gain"] = round(finetuned["primary"] - baseline["primary"], 12)
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
    """Log params, each value as text. A key the run already holds with the same value is left alone; one
    it holds with another value is refused here, naming the key, instead of MLflow's bare refusal. Credentials
    (a URI's password, an environment token's value) are masked first: a setting never carries one to the store."""
    from mlflow.entities import Param

    text = {key: redact(str("" if value is None else value))[:_MAX_PARAM_LENGTH] for key, value in params.items()}
    logged = _client().get_run(run_id).data.params
    clashes = {key: (logged[key], value) for key, value in text.items() if key in logged and logged[key] != value}
    if clashes:
        raise ValueError(f"Run {run_id} already holds these params with other values (logged, new): {clashes}")
    _client().log_batch(run_id, params=[Param(key, value) for key, value in text.items() if key not in logged])


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    if tags:
        _client().log_batch(run_id, tags=[RunTag(key, redact(str(value))) for key, value in tags.items()])


def log_record(run_id: str, record: RunRecord) -> None:
    """Name the run, set its table tags, and log the record's params and metrics; the interrupted runs whose
    fine-tune it resumed are tagged ``superseded_by`` it."""
    set_tags(run_id, {"mlflow.runName": record.name, **run_tags(record.configuration, record.seed)})
    log_params(run_id, record.params)
    log_metrics(run_id, record.metrics)
    mark_superseded(run_id, [old for old in str(record.provenance.get(SUPERSEDES) or "").split(",") if old])


def resume_provenance(training_summary: Mapping[str, Any]) -> dict[str, Any]:
    """A fine-tune resumed from an interrupted run's checkpoint (checkpoints.py): the step it resumed at and
    the runs it supersedes (params; nothing for a fine-tune that trained every step itself)."""
    step = int(training_summary.get("resumed_from_step") or 0)
    if not step:
        return {}
    return {RESUMED_FROM_STEP: step, SUPERSEDES: ",".join(training_summary.get("superseded_run_ids") or [])}


def mark_superseded(run_id: str, old_run_ids: Sequence[str]) -> None:
    """Tag each interrupted run whose steps ``run_id`` took over (they stay KILLED or FAILED: one configuration
    never has two FINISHED runs) with ``superseded_by``; a run no longer in the store is skipped."""
    from mlflow.exceptions import MlflowException

    for old in old_run_ids:
        try:
            _client().set_tag(old, SUPERSEDED_BY, run_id)
        except MlflowException as error:
            logger.warning("The superseded run %s could not be tagged (%s)", old, error)


def run_metric(run_id: str, name: str) -> float | None:
    return _client().get_run(run_id).data.metrics.get(name)


def active_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


# --- a tracking server over HTTP: retries, and a server that cannot be reached -------------------------------

# MLflow's own defaults (7 retries, backoff factor 2, 120 s per attempt) wait about four minutes on every
# request once the server is gone (about 20 on a server that hangs), and a failed run's clean-up makes a few
# more. These wait about half a minute per request on a refused connection (0 + 4 + 8 + 16 s, plus up to 1 s
# of jitter each; about 3 minutes on a hung server, 5 attempts of 30 s): long enough to ride out a server
# restart, short enough to fail clearly. The time-out is per socket operation, not per upload. A value the
# user exported wins.
HTTP_REQUEST_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                         # MLflow prints a link to every run it ends on an HTTP store, with the server URI as
                         # typed, a password in it included; the project prints its own link, redacted.
                         "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def tracking_uri_or(default: str) -> str:
    """The tracking URI of conf/base/mlflow.yml (``${tracking_uri_or:...}``): ``MLFLOW_TRACKING_URI`` when it is
    set, else ``default``. A conf/<env>/mlflow.yml that names its own URI wins over both."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def use_http_request_defaults() -> None:
    """Set the project's MLflow HTTP retry and time-out defaults where the environment sets none (in the
    driver and in every Ray worker, which may run on a machine whose environment the driver never saw)."""
    for name, value in HTTP_REQUEST_DEFAULTS.items():
        os.environ.setdefault(name, value)


class TrackingServerUnavailableError(UserFacingError, RuntimeError):
    """The tracking server did not answer after MLflow's retries. Runs that FINISHED are on the server; the
    run in flight is left RUNNING there, and the next start of the same sweep marks it FAILED and retries it."""


def server_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from or while handling) is MLflow's REST client giving up on the
    server: refused or dropped connections, time-outs, or retried 5xx answers. MLflow wraps the ``requests`` error
    in an ``MlflowException`` without ``from``, so the chain is walked through ``__context__`` too."""
    import requests

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, requests.ConnectionError | requests.Timeout | requests.exceptions.RetryError):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def tracking_server_errors(doing: str) -> Iterator[None]:
    """Turn the REST client's giving up on the tracking server, while ``doing`` something, into one
    :class:`TrackingServerUnavailableError` naming the server, what was lost and how to resume."""
    import mlflow

    try:
        yield
    except TrackingServerUnavailableError:
        raise
    except Exception as error:
        if not server_unreachable(error):
            raise
        retries = {name.removeprefix("MLFLOW_HTTP_REQUEST_").lower(): os.environ.get(name, default)
                   for name, default in HTTP_REQUEST_DEFAULTS.items()}
        raise TrackingServerUnavailableError(
            f"The MLflow tracking server at {redact(mlflow.get_tracking_uri())} did not answer ({_reason(error)}) "
            f"while {doing}",
            where="MLFLOW_TRACKING_URI, else server.mlflow_tracking_uri in conf/<env>/mlflow.yml",
            fix="start the server (again, on the same backend store and artifact root) or correct its address, then "
                "re-run the same command: what FINISHED on the server is kept, and a sweep reuses its finished "
                "configurations and retries the one in flight "
                f"(retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES={retries['max_retries']}, "
                f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR={retries['backoff_factor']}, "
                f"MLFLOW_HTTP_REQUEST_TIMEOUT={retries['timeout']} s)") from error


def _reason(error: BaseException) -> str:
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text) or re.search(r"(Read timed out|timed out|too many \d+ "
                                                                       r"error responses)", text)
    return match.group(1).strip() if match else type(error).__name__


@contextmanager
def child_run(experiment_id: str, parent_run_id: str | None, name: str,
              tags: Mapping[str, str]) -> Iterator[str]:
    """A run nested under ``parent_run_id``; MLflow ends it FINISHED, or FAILED when the body raises
    (the error is also kept as the tag ``run_failure``). An interrupt (SIGINT/SIGTERM) ends it KILLED
    through :func:`end_runs_killed` before it gets here; that is not overwritten."""
    import mlflow

    run = None
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True, parent_run_id=parent_run_id,
                              tags={**process_tags(), **tags}) as run:
            try:
                yield run.info.run_id
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:
                if not server_unreachable(error):  # a lost server would only make the tag wait for it again
                    _client().set_tag(run.info.run_id, "run_failure",
                                      redact(f"{type(error).__name__}: {error}")[:5000])
                raise
    except Exception as error:
        if run is not None and server_unreachable(error):
            abandon_run(run.info.run_id)
        raise


# Runs this process opened and then lost with the tracking server (left RUNNING there). This process is alive (a
# re-run in the same process, a Ray worker kept for its next task), but it runs them no more: they are not its
# live claims, and a later start marks them FAILED like a dead process's.
_ABANDONED_RUNS: set[str] = set()


def abandon_run(run_id: str | None) -> None:
    """Record that this process gave up on ``run_id`` (the tracking server stopped answering while it ran)."""
    if run_id:
        _ABANDONED_RUNS.add(run_id)


# --- the lifecycle of a run: who runs it, interrupted and stale runs ----------------------------------------


def process_tags() -> dict[str, str]:
    """Where a run is being run (host and process id), so a later start can tell a live run from a dead one."""
    import os
    import socket

    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _process_alive(pid: int, started_ms: int | None) -> bool:
    """Whether process ``pid`` exists and is the one that started the run (not a later process given the
    same id: it would have been created after the run started)."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.AccessDenied:  # it exists (another user's, or another PID namespace's): never mark it dead
        return True
    except (psutil.NoSuchProcess, ValueError):
        return False
    return started_ms is None or created <= started_ms / 1000 + 1


def mark_stale_runs_failed(experiment_id: str, current_run_id: str | None = None) -> list[str]:
    """RUNNING runs of this experiment whose process is gone (same host, its process no longer running) were
    killed without closing (SIGKILL, out of memory, power loss): mark them FAILED with the reason. Runs of
    other hosts, and runs logged before runs carried their process, are left as they are (they may be alive)."""
    import socket

    client, host = _client(), socket.gethostname()
    marked = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if run.info.run_id == current_run_id or tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if _process_alive(int(tags[PID_TAG]), run.info.start_time):
            continue
        client.set_tag(run.info.run_id, "run_failure",
                       f"interrupted: process {tags[PID_TAG]} on {host} ended without closing the run "
                       "(found RUNNING when a later run started)")
        client.set_terminated(run.info.run_id, status="FAILED")
        marked.append(run.info.run_id)
    if marked:
        logger.warning("%d run(s) left RUNNING by a killed process were marked FAILED: %s", len(marked),
                       ", ".join(marked))
    return marked


def end_runs_killed(run_ids: Sequence[str | None], reason: str) -> None:
    """End every run this process has open (the active nested runs first, then ``run_ids``) as KILLED, each
    with the tag ``run_failure``: an interrupted run is then not left RUNNING."""
    import mlflow

    client = _client()
    while (run := mlflow.active_run()) is not None:
        client.set_tag(run.info.run_id, "run_failure", reason)
        mlflow.end_run("KILLED")
    for run_id in filter(None, run_ids):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "run_failure", reason)
            client.set_terminated(run_id, status="KILLED")


def store_setup_lock(timeout_s: float = 600) -> Any:
    """A lock (a file in the model cache folder, one per machine) held while a run opens its tracking store:
    MLflow creates and migrates a new SQLite store's tables on first use and is not safe when two processes do
    it at once; held for that moment only, so runs started together open the store one after the other."""
    from filelock import FileLock

    from finetune_predictor.modeling.models import default_cache_dir

    folder = default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / "mlflow-store-setup.lock"), timeout=timeout_s)


def mark_model_training_experiment(experiment_id: str) -> None:
    """Tag the experiment as model training (MLflow's ``mlflow.experimentKind``), so the UI opens it on runs,
    params and metrics rather than its GenAI views (traces, judges, prompts)."""
    client = _client()
    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def ui_url(experiment_id: str, run_id: str | None = None, host: str = "127.0.0.1", port: int | str = 5000,
           server: str | None = None) -> str:
    """A link into ``mlflow ui`` (or into the UI of the tracking server at ``server``) that opens the
    model-training view. MLflow 3.17's UI takes the view from its ``workflowType`` (a browser setting, "genai"
    until changed), not from the experiment's tag, unless the link names it."""
    path = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "/runs")
    return f"{server or f'http://{host}:{port}'}/#/{path}?workflowType=machine_learning"


def tracking_server_url(uri: str | None = None) -> str | None:
    """The tracking server's address when the store is one (``http(s)://``), without any ``user:password@``:
    its UI is where a run is read; None for a local store (``mlflow ui`` opens that)."""
    from urllib.parse import urlsplit

    import mlflow

    parts = urlsplit(uri if uri is not None else mlflow.get_tracking_uri())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"


# --- what a run is given: its settings and data sets ----------------------------------------------------------


# MLflow's rule for param names (mlflow.utils.validation): a user's own keys, such as the raw labels of
# data.label_map ("pants on fire!"), would otherwise stop the run at its start.
_INVALID_PARAM_CHARACTERS = re.compile(r"[^/\w.\- :]")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{_INVALID_PARAM_CHARACTERS.sub('_', str(key))}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, list | tuple) and all(not isinstance(item, Mapping | list) for item in value):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value
    return flat


# Settings the run record logs under its own name and value: at the start of a run they are logged under
# that name, never a second time under their setting's path.
_RECORD_SETTINGS = ("model.name", "model.max_length", "data.task", "training.learning_rate", "training.lora.r",
                    "training.lora.alpha", "training.lora.dropout", "training.num_train_epochs",
                    "training.max_steps", "training.seed")


def _models_used(parameters: Mapping[str, Any]) -> list[str]:
    names = [(parameters.get("model") or {}).get("name")]
    names += list((parameters.get("sensitivity") or {}).get("models") or [])
    return sorted({str(name) for name in names if name})


def settings_params(parameters: Mapping[str, Any], with_record: bool) -> dict[str, Any]:
    """Each setting a run reads, once, as MLflow params: groups flattened (``training.warmup_ratio``); of the
    model registry only the resolved entry of the model(s) used (``model.registry.params_b``; with several
    models ``model.registry.<name>.params_b``). With a run record (``with_record``), the settings it logs
    take its names (``learning_rate``, ``lora_r``, ``model_name``, ``seed``, the clean variant) with the same
    values; requested values that the run resolves later keep their setting's path (``training.precision``
    = auto beside the record's ``precision`` = fp32)."""
    from dataclasses import asdict

    from finetune_predictor.modeling.models import ModelEntry

    values = {key: value for key, value in parameters.items() if key != "model_registry"}
    flat = _flatten(values)
    if "model_registry" in parameters:
        models = _models_used(parameters)
        for name in models:
            entry = asdict(ModelEntry.from_registry(name, parameters["model_registry"]))
            prefix = "model.registry." if len(models) == 1 else f"model.registry.{name}."
            flat.update(_flatten({key: value for key, value in entry.items() if key != "name"}, prefix))
    if with_record:
        training = parameters["training"]
        record = settings_configuration(parameters["model"], training, parameters["data"])
        flat = {key: value for key, value in flat.items() if key not in _RECORD_SETTINGS}
        flat.update({**record, "seed": TrainingSettings.from_params(dict(training)).seed})
    return flat


def log_dataset(run_id: str, frame: pd.DataFrame, source: str, suffix: str, context: str,
                digest: str | None = None) -> None:
    """The run's input data set as MLflow shows it (the runs table's Dataset column, the run's inputs): named
    ``<source label>_<suffix>``, its schema and row count, ``context`` (training, validation, test), and as
    digest the first 16 hex digits of the content hash the run record logs (``train_sha256``,
    ``test_sha256``), or of the frame's own content hash where the record logs none."""
    import warnings

    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    from finetune_predictor.data.records import content_sha256

    name, digest = f"{dataset_label(source)}_{suffix}", digest or content_sha256(frame)

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a plain name is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_pandas(frame, source=source, targets="output" if "output" in frame else None,
                                          name=name, digest=digest[:16])
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])]
    for attempt in range(3):
        try:
            _client().log_inputs(run_id, datasets=inputs)
            return
        except Exception as error:
            # The store's get-or-create of a data set is not atomic: two runs logging the same one (same data,
            # started together) collide on its unique key; it exists once the other has, and is linked on retry.
            text = str(error).lower()
            if attempt == 2 or not ("unique constraint" in text or "duplicate entry" in text):
                raise
            time.sleep(0.2 * (attempt + 1))


# --- finding runs again ----------------------------------------------------------------------------------


def runs_with_key(experiment_id: str, key: str) -> list[Any]:
    return _client().search_runs([experiment_id], filter_string=f"tags.{CONFIG_KEY_TAG} = '{key}'")


def _process_state(run: Any) -> bool | None:
    """Whether the process that opened ``run`` is alive; None when this host cannot tell (another host's run, or
    a run without process tags)."""
    import socket

    tags = run.data.tags
    if run.info.run_id in _ABANDONED_RUNS:
        return False
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    return _process_alive(int(tags[PID_TAG]), run.info.start_time)


def run_may_be_alive(run: Any) -> bool:
    """Whether a RUNNING run may still be running: its process is alive (a run of this host), or, for a run of
    another host (a Ray worker elsewhere), its parent run is RUNNING and its parent's process is not known dead.
    A run without process tags predates them (or was never a sweep's): it counts as interrupted."""
    if not run.data.tags.get(PID_TAG, "").isdigit():
        return False
    state = _process_state(run)
    if state is not None:
        return state
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return True
    parent = _client().get_run(parent_id)
    return parent.info.status == "RUNNING" and _process_state(parent) is not False


def mark_interrupted_runs_failed(experiment_id: str, key: str, current_parent_run_id: str | None = None) -> int:
    """A RUNNING run for this key at sweep start whose process is gone belongs to a sweep that was killed: mark
    it FAILED. One whose process is alive belongs to a sweep running beside this one: it is left alone (it was
    marked FAILED, and its parent with it, by a second sweep started on the same store).

    Its parent sweep run died with it (kedro-mlflow never got to end it), so that parent is marked FAILED
    too, unless it is the sweep now running or its process is alive.
    """
    client = _client()
    crashed = [run for run in runs_with_key(experiment_id, key)
               if run.info.status == "RUNNING" and not run_may_be_alive(run)]
    for run in crashed:
        client.set_tag(run.info.run_id, "run_failure", "interrupted: found RUNNING when the sweep restarted")
        client.set_terminated(run.info.run_id, status="FAILED")
        parent_id = run.data.tags.get("mlflow.parentRunId")
        parent = client.get_run(parent_id) if parent_id and parent_id != current_parent_run_id else None
        if parent is not None and parent.info.status == "RUNNING" and _process_state(parent) is not True:
            client.set_tag(parent_id, "run_failure",
                           f"interrupted: its child run {run.info.run_id} was found RUNNING at restart")
            client.set_terminated(parent_id, status="FAILED")
    return len(crashed)


CLAIMED = "is being run by another process"


class ConfigurationClaimedError(RuntimeError):
    """Another process runs (or has finished) this configuration: this process waits for its run instead."""


def _opened(run: Any) -> tuple[int, str]:
    return run.info.start_time or 0, run.info.run_id


def live_claim(experiment_id: str, key: str, run_id: str | None = None) -> Any | None:
    """The run that another live process opened first for configuration ``key`` (not ``run_id``), if any."""
    running = [run for run in runs_with_key(experiment_id, key) if run.info.status == "RUNNING"
               and run.info.run_id != run_id and run_may_be_alive(run)]
    return min(running, key=_opened) if running else None


@contextmanager
def configuration_claim(experiment_id: str, key: str, lock_dir: str | Path) -> Iterator[None]:
    """Held while this process runs configuration ``key``. Two sweeps on one store share its configurations:
    a lock file per key (``lock_dir``, the sweep's output folder, where the run's files go) keeps a second
    process on this machine out, and one that finds the configuration FINISHED, or RUNNING in another live
    process (another machine's), stays out too. Both raise :class:`ConfigurationClaimedError`."""
    from filelock import FileLock, Timeout

    folder = Path(lock_dir) / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{key}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigurationClaimedError(f"configuration {key} {CLAIMED} on this machine") from None
    try:
        owner = finished_run(experiment_id, key) or live_claim(experiment_id, key)
        if owner is not None:
            raise ConfigurationClaimedError(f"configuration {key} {CLAIMED}: run {owner.info.run_id} "
                                            f"({owner.info.status})")
        yield
    finally:
        lock.release()


def refuse_if_claimed_first(experiment_id: str, key: str, run_id: str) -> None:
    """Inside the child run ``run_id`` just opened for ``key``: when a live run of another process opened for it
    earlier (two machines that passed :func:`configuration_claim` at once), this run ends KILLED, naming that
    one, and :class:`ConfigurationClaimedError` is raised. The earlier run keeps it: of two such runs, both
    see the other or the later one sees the earlier, so at least one runs the configuration; both only when the
    later to be stored is the earlier opened (milliseconds apart), and :func:`runs_table` then keeps one."""
    import mlflow

    owner = live_claim(experiment_id, key, run_id)
    mine = _client().get_run(run_id)
    if owner is None or _opened(owner) > _opened(mine):
        return
    reason = f"superseded: configuration {key} {CLAIMED} (run {owner.info.run_id}, opened first)"
    _client().set_tag(run_id, "run_failure", reason)
    mlflow.end_run("KILLED")
    raise ConfigurationClaimedError(reason)


def forecast_skipped_runs(experiment_id: str, sweep_name: str) -> list[Any]:
    """The child runs in which forecast-driven runs of the sweep ``sweep_name`` recorded what they skipped."""
    return _client().search_runs([experiment_id], filter_string=f"tags.{SKIPPED_BY_FORECAST_TAG} = 'true' and "
                                                                f"tags.{SWEEP_TAG} = '{sweep_name}'")


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


def _one_run_per_configuration_key(runs: pd.DataFrame) -> pd.DataFrame:
    """Of FINISHED sweep runs sharing a ``sweep_config_key`` (the same configuration and seed: two machines'
    sweeps claimed it within milliseconds, see :func:`refuse_if_claimed_first`), the last to finish, as
    :func:`finished_run` picks it; counting both would weigh one configuration twice."""
    column = f"tags.{CONFIG_KEY_TAG}"
    if column not in runs:
        return runs
    keyed = runs[column].notna()
    latest = runs[keyed].sort_values("end_time", kind="stable").drop_duplicates(column, keep="last")
    if keyed.sum() > len(latest):
        logger.warning("%d duplicate FINISHED run(s) of a configuration key left out of the runs table (the last to "
                       "finish of each key is kept)", int(keyed.sum() - len(latest)))
    return pd.concat([runs[~keyed], latest]).sort_index()


def runs_table(experiment_name: str = EXPERIMENT_NAME) -> pd.DataFrame:
    """FINISHED fine-tune runs (with a fine-tuned primary metric), one row each: metrics, the configuration's
    params, ``task``, ``dataset_family``, ``model`` and ``replicate_key``, as the run record logged them.
    Classification runs logged before the primary metric existed take their accuracy as ``*_primary``."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"MLflow experiment {experiment_name!r} does not exist at {redact(mlflow.get_tracking_uri())}")
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    for side in ("baseline", "finetuned", "validation", "classical"):
        primary, accuracy = f"metrics.{side}_primary", f"metrics.{side}_accuracy"
        if accuracy in runs:
            runs[primary] = runs[primary].fillna(runs[accuracy]) if primary in runs else runs[accuracy]
    if runs.empty or "metrics.finetuned_primary" not in runs:
        return pd.DataFrame()
    runs = _one_run_per_configuration_key(runs[runs["metrics.finetuned_primary"].notna()]).reset_index(drop=True)
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
