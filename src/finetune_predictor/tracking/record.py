"""The run record: what one fine-tune is, as MLflow stores it, and the names runs carry there.

A :class:`RunRecord` is a name, flat params and metrics. Its params come in three parts: the configuration
(what defines the fine-tune apart from its seed; its hash is the ``replicate_key`` of seed replicates), the seed,
and provenance (where the run came from and what it produced). This module builds the record from a run's
settings, split, training summary and evaluations; it also turns a run's settings into the params logged at its
start (:func:`settings_params`), under the same names and values the record logs at its end. It talks to no
tracking store (:mod:`finetune_predictor.tracking.store` logs the record).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_predictor.modeling.models import folder_sha256
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tracking.provenance import git_sha, run_provenance

git_sha()  # taken when the process starts: the code a run started with, not the code at its end

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


def resume_provenance(training_summary: Mapping[str, Any]) -> dict[str, Any]:
    """A fine-tune resumed from an interrupted run's checkpoint (checkpoints.py): the step it resumed at and
    the runs it supersedes (params; nothing for a fine-tune that trained every step itself)."""
    step = int(training_summary.get("resumed_from_step") or 0)
    if not step:
        return {}
    return {RESUMED_FROM_STEP: step, SUPERSEDES: ",".join(training_summary.get("superseded_run_ids") or [])}


# --- what a run is given: its settings, logged when it starts -------------------------------------------------


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
