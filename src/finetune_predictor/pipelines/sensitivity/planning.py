"""Planning a sweep: its data, what every configuration shares, and each configuration's resume key.

A configuration's key (:meth:`SweepConfig.key`) hashes the configuration, the exact data it sees
(:meth:`SweepData.fingerprint`) and every resolved setting that can change a result (:func:`settings_fingerprint`);
:func:`plan` gives every configuration of the grid its key, which the runner resumes by.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor import tracking
from finetune_predictor.data import task_data
from finetune_predictor.data.records import content_sha256
from finetune_predictor.pipelines.sensitivity.grid import SweepConfig, apply_variant, expand_grid
from finetune_predictor.settings_schema import UNKEYED_TRAINING_SETTINGS
from finetune_predictor.tasks import TASK_TYPES, Task, build_task, task_type

# Whether a stored baseline may be reused changes where the base model's predictions come from, not what
# they are (the baseline key holds everything that changes them): it must not re-key finished sweeps.
UNKEYED_EVALUATION_SETTINGS = ("reuse_baseline",)
# A classification task's generation budget is derived from its labels' token counts (evaluation.max_new_tokens).
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


def _absolute_tracking_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def sweep_context(sensitivity: Mapping[str, Any], sweep_data: SweepData, data: dict[str, Any],
                  model: dict[str, Any], model_registry: dict[str, Any], training: dict[str, Any],
                  evaluation: dict[str, Any], sweep_name: str) -> SweepContext:
    """The sweep's context: nested under the active MLflow run when there is one (else in the project's
    experiment), its evaluation at ``sensitivity.evaluation_batch_size`` when set."""
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


# --- resume keys ----------------------------------------------------------------------------------------------


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


def plan(sensitivity: Mapping[str, Any], sweep_data: SweepData, context: SweepContext) -> dict[SweepConfig, str]:
    """Every configuration of the grid with its resume key."""
    configs = expand_grid(sensitivity, context.model["name"])
    sweep_data.add_sources(configs, context.data, context.task)
    missing = sorted({c.train_per_class for c in configs} - {int(s) for s in sweep_data.split_summary["subset_sha256"]})
    if missing:
        raise ValueError(f"sensitivity.train_per_class {missing} have no prepared subset: re-run prepare_sweep_data")
    settings = settings_fingerprint(context.model, context.training, context.evaluation, context.data)
    return {config: config.key(sweep_data.fingerprint(config), settings) for config in configs}
