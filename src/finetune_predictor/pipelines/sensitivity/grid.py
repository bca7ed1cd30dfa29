"""The sweep's grid: configurations (model, size, learning rate, LoRA shape, epochs, seed, data variant),
their resume keys, and the data-quality variants of a training subset."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from finetune_predictor.data.records import canonical
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import Task
from finetune_predictor.tracking import run_name


@dataclass(frozen=True)
class DataVariant:
    """A data-quality variant of the training subset (the test set never changes).

    ``label_noise``: share of training targets corrupted by the task (labels flipped; QA answers shuffled
    between questions; structured fields dropped or swapped); ``duplicate_rate``: share of training records
    replaced by copies of other training records; ``positive_share``: share of the positive class at the
    same total size (0.5 = balanced); ``source``: ``data.*`` settings of another source of the same task
    (``{synthetic: {difficulty: easy}}``, ``{path: other.jsonl}``): the training subset is drawn from it, at
    the same size, with the sweep's test and validation text kept out (a candidate training set from a
    different generator or file, scored on the same test set).
    """

    name: str = "clean"
    label_noise: float = 0.0
    duplicate_rate: float = 0.0
    positive_share: float = 0.5
    source: str | None = None  # the source's data settings as sorted JSON (hashable: configurations are dict keys)

    def __post_init__(self) -> None:
        if isinstance(self.source, Mapping):
            object.__setattr__(self, "source", json.dumps(dict(self.source), sort_keys=True))
        if self.source is not None and self.positive_share != 0.5:
            raise ValueError(f"sensitivity.data_variants.{self.name}: source and positive_share cannot be combined "
                             "(the class-share pool is the sweep's own source)")
        for key, value, upper in (("label_noise", self.label_noise, 0.5), ("duplicate_rate", self.duplicate_rate, 0.9),
                                  ("positive_share", self.positive_share, 1.0)):
            if not 0 <= value <= upper:
                raise ValueError(f"sensitivity.data_variants.{self.name}.{key} must be in [0, {upper}], got {value}")

    def as_params(self) -> dict[str, Any]:
        """The variant as run-record params (part of the configuration); ``data_source`` only for a source
        variant, so that the runs of every other variant keep their replicate keys."""
        params = {"data_variant": self.name, "label_noise": self.label_noise, "duplicate_rate": self.duplicate_rate,
                  "positive_share": self.positive_share}
        return params if self.source is None else {**params, "data_source": self.source}


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

    def key(self, data_fingerprint: str, settings: Mapping[str, Any] | None = None) -> str:
        """The resume key: this configuration, the data it sees, and every resolved setting that can change
        a result (``model``, ``training``, ``evaluation`` and task parameters). A change to any of them
        (batch size, max_steps, precision, quantization, max_length, ...) means new runs, never a stale
        reuse."""
        config = asdict(self)
        if self.variant.source is None:  # the key of every variant that predates sources stays as it was
            config["variant"].pop("source")
        payload = json.dumps({"config": config, "data": data_fingerprint, "settings": settings or {}},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def training_params(self, base: Mapping[str, Any]) -> dict[str, Any]:
        lora = {**dict(base.get("lora") or {}), "r": self.lora_r, "alpha": self.lora_alpha,
                "dropout": self.lora_dropout}
        return {**dict(base), "learning_rate": self.learning_rate, "num_train_epochs": self.num_train_epochs,
                "seed": self.seed, "lora": lora}

    def label(self, dataset: str, base_training: Mapping[str, Any] | None = None, strata: int = 2) -> str:
        """The run name (the tracking module's one format); ``strata``: the task's labels (1 for open tasks)."""
        settings = TrainingSettings.from_params(self.training_params(base_training or {}))
        return run_name(self.model, dataset, strata * self.train_per_class, settings, self.variant.name)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def expand_grid(sensitivity: Mapping[str, Any], default_model: str) -> list[SweepConfig]:
    """Every combination of the sweep's axes, in a stable order (smallest sizes first)."""
    known = {"executor", "ray_address", "gpus_per_run", "models", "train_per_class", "learning_rates", "lora",
             "validation_per_class",
             "num_train_epochs", "seeds", "data_variants", "test_per_class", "output_dir", "evaluation_batch_size",
             "meta_features", "strategy", "forecast_interval_level", "wait_for_others_h"}
    unknown = sorted(set(sensitivity) - known)
    if unknown:
        raise ValueError(f"Unknown sensitivity setting(s) {unknown}; known: {sorted(known)}")
    loras = [dict(item) for item in _as_list(sensitivity.get("lora") or [{"r": 8, "alpha": 32, "dropout": 0.1}])]
    for index, lora in enumerate(loras):
        extra = sorted(set(lora) - {"r", "alpha", "dropout"})
        if extra:
            raise ValueError(f"sensitivity.lora[{index}] sets {extra}: a sweep's LoRA shapes vary r, alpha and "
                             "dropout; set other LoRA settings (target_modules) once in training.lora")
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


def apply_variant(train: pd.DataFrame, variant: DataVariant, task: Task, seed: int,
                  pool: pd.DataFrame | None = None) -> pd.DataFrame:
    """The training subset degraded as the variant says, deterministically from ``seed``.

    ``positive_share`` re-draws the classes from ``pool`` (the nested candidates) at the same total.
    """
    rng = np.random.default_rng(seed + 7919)
    out = train.copy()
    labels = task.candidates() or []
    if variant.positive_share != 0.5:
        if len(labels) != 2:
            raise ValueError(f"data variant {variant.name!r}: positive_share applies to two labels, this task has "
                             f"{len(labels)}; use label_noise or duplicate_rate")
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
        out["output"] = task.corrupt(out["output"].astype(str).tolist(), variant.label_noise, rng)
        # A corrupted target is no longer one of the record's accepted answers.
        out["references"] = ""
    return canonical(out)
