"""Typed views of the parameter groups, so a misspelt key, a wrong type or an out-of-range value fails before
compute starts, naming the full setting (``data.train_per_class must be an integer, got 'abc'``).

Each group a user sets (``conf/base/parameters_<group>.yml``, ``--params group.key=value``) has a frozen
dataclass here; nested dicts (``data.columns``, ``data.qa``, ``data.synthetic``, ``training.lora``) have
their own. ``from_params`` (``settings_checks.py``) refuses unknown keys (listing the known ones, and the closest
one for a typo), checks each value against the field's type, and converts what the command line or YAML spelt
loosely (a number for a text label, a quoted number, a list for a tuple). Allowed values are read from the module
that uses them (``choices``), so they have one home. :func:`parameter_problems` checks every group at once for
the preflight and for pipelines that run without one.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# SettingsError is also imported from here, beside the groups whose problems it names.
from finetune_predictor.settings_checks import (
    SettingsError,
    SettingsGroup,
    at_least,
    between,
    choices,
    group_problems,
    one_of,
)

# --- training -------------------------------------------------------------------------------------------


# Training settings of the held-out loss curve: they never change the trained adapter or its results (the
# curve restores the random state), so they key neither a sweep's resume nor the meta-feature cache. Nor does
# the out-of-memory ladder: it says how a run that does not fit retries, and its record says what it ran with.
# Nor do where and how often a fine-tune is checkpointed (a resumed run trains what an uninterrupted one does).
UNKEYED_TRAINING_SETTINGS = ("eval_steps", "eval_max_records", "oom_fallback", "checkpoint_steps", "checkpoint_dir")


@dataclass(frozen=True)
class LoraSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "training.lora"
    r: int = field(default=8, metadata=at_least(1))
    alpha: int = field(default=32, metadata=at_least(1))
    dropout: float = field(default=0.1, metadata=at_least(0.0))
    target_modules: tuple[str, ...] | str = "auto"  # auto: the model registry's modules for the model

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise SettingsError([("training.lora.r", "training.lora.r and training.lora.alpha must be >= 1, "
                                                     f"got r={self.r}, alpha={self.alpha}")])
        if not 0 <= self.dropout < 1:
            raise SettingsError([("training.lora.dropout",
                                  f"training.lora.dropout must be in [0, 1), got {self.dropout}")])
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class TrainingSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "training"
    learning_rate: float = 3e-4
    num_train_epochs: float = 3
    max_steps: int = -1
    per_device_train_batch_size: int = field(default=8, metadata=at_least(1))
    gradient_accumulation_steps: int = field(default=1, metadata=at_least(1))
    warmup_ratio: float = field(default=0.05, metadata=at_least(0.0))
    weight_decay: float = field(default=0.0, metadata=at_least(0.0))
    lr_scheduler_type: str = "linear"
    seed: int = 42
    precision: str = field(default="auto",
                           metadata=choices("finetune_predictor.modeling.hardware", "PRECISION_CHOICES"))
    logging_steps: int = field(default=1, metadata=at_least(1))
    # TRL turns this on by default; it re-runs the forward pass and only pays off when memory is short.
    gradient_checkpointing: bool = False
    # answer: logits only for the trailing answer window of left-padded batches (same loss, ~2x faster on
    # CPU); full: TRL's stock collator and loss, for remote-code models whose forward lacks logits_to_keep.
    loss_window: str = field(default="answer", metadata=one_of("answer", "full"))
    # Batches of similar length (the HF length-grouped sampler): far less of each batch is padding
    # (benchmarks/measure_padding_waste.py); the answer-only loss of every row is unchanged.
    group_by_length: bool = True
    # The held-out loss curve: evaluated every eval_steps optimiser steps and after the last (0 = none), on at
    # most eval_max_records records, so it costs a small share of training. It never changes the trained
    # adapter, so it is not part of a sweep's resume key.
    eval_steps: int = field(default=25, metadata=at_least(0))
    eval_max_records: int = field(default=32, metadata=at_least(1))
    # Resumable fine-tunes (checkpoints.py): the Trainer's checkpoint (adapter, optimizer, scheduler, RNG) every
    # checkpoint_steps optimiser steps and after the last (0 = none), the last two kept, deleted once the run
    # finished; a killed run's same command resumes from it. mini_test100 keeps them in checkpoint_dir/<key>,
    # a sweep in its configuration's folder. Neither changes what is trained, so neither keys a resume.
    checkpoint_steps: int = field(default=25, metadata=at_least(0))
    checkpoint_dir: str = "data/06_models/checkpoints"
    # On CUDA out of memory, retry with each rung in turn, on top of the ones before (memory_fallback.py):
    # half_batch (same effective batch), gradient_checkpointing, 4bit (QLoRA; only when listed). [] = fail at once.
    oom_fallback: tuple[str, ...] = field(default=("half_batch", "gradient_checkpointing"),
                                          metadata=choices("finetune_predictor.modeling.memory_fallback",
                                                           "OOM_FALLBACKS"))
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        def refuse(setting: str, message: str) -> None:
            raise SettingsError([(setting, message)])

        if not 0 < self.learning_rate < 1:
            refuse("training.learning_rate", f"training.learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            refuse("training.num_train_epochs", "training.num_train_epochs or training.max_steps must be positive")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            refuse("training.per_device_train_batch_size",
                   "training.per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.loss_window not in ("answer", "full"):
            refuse("training.loss_window", f"training.loss_window must be 'answer' or 'full', got {self.loss_window!r}")
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings.from_params(self.lora))
        if isinstance(self.oom_fallback, list):
            object.__setattr__(self, "oom_fallback", tuple(self.oom_fallback))

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


# --- data -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnsSettings(SettingsGroup):
    """Canonical field -> the file's column name, or its 0-based position in a file without header."""

    PREFIX: typing.ClassVar[str] = "data.columns"
    id: int | str | None = None
    instruction: int | str | None = None
    input: int | str | None = None
    output: int | str | None = None
    group: int | str | None = None


@dataclass(frozen=True)
class QASettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "data.qa"
    include_unanswerable: bool = False
    no_answer: str = "unanswerable"
    group_by: str = field(default="article", metadata=choices("finetune_predictor.data.records", "QA_GROUPS"))


@dataclass(frozen=True)
class SyntheticSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "data.synthetic"
    num_records: int = field(default=24000, metadata=at_least(2))
    seed: int = 7
    difficulty: str = field(default="standard",
                            metadata=choices("finetune_predictor.data.synthetic_news", "DIFFICULTIES"))


@dataclass(frozen=True)
class DataSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "data"
    task: str = field(default="binary_classification", metadata=choices("finetune_predictor.tasks", "TASK_TYPES"))
    path: str | None = None
    test_path: str | None = None
    format: str = field(default="auto", metadata=choices("finetune_predictor.data.records", "FORMATS"))
    columns: ColumnsSettings = field(default_factory=ColumnsSettings)
    header: bool = True
    instruction: str | None = None
    label_map: dict[str, str] | None = None
    split: str = "train"
    group: str | None = None
    family: str | None = None
    on_invalid: str = field(default="error", metadata=choices("finetune_predictor.data.records", "INVALID_POLICIES"))
    duplicates: str = field(default="drop", metadata=choices("finetune_predictor.data.splits", "DUPLICATE_POLICIES"))
    test_overlap: str = field(default="drop", metadata=choices("finetune_predictor.data.splits", "OVERLAP_POLICIES"))
    label_positive: str = "fake"
    label_negative: str = "legitimate"
    labels: tuple[str, ...] | None = None
    schema: dict[str, str] | None = None
    qa: QASettings = field(default_factory=QASettings)
    test_split: str = field(default="auto", metadata=one_of("auto", "record", "group"))
    train_per_class: int = field(default=100, metadata=at_least(1))
    test_per_class: int | None = field(default=100, metadata=at_least(1))
    seed: int = 42
    # A record whose text is longer than this many characters is refused (quarantined under
    # on_invalid=quarantine): far beyond any model.max_length, it is almost always a broken export.
    max_record_chars: int | None = field(default=100_000, metadata=at_least(1))
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)


# --- model and evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "model"
    name: str = "SmolLM2-135M-Instruct"
    cache_dir: str | None = None
    quantization: str = field(default="none",
                              metadata=choices("finetune_predictor.modeling.hardware", "QUANTIZATION_CHOICES"))
    max_length: int = field(default=512, metadata=at_least(16))
    system_prompt: str | None = None


@dataclass(frozen=True)
class EvaluationSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "evaluation"
    batch_size: int = field(default=16, metadata=at_least(1))
    generation: bool = True
    max_new_tokens: int | None = field(default=None, metadata=at_least(1))
    engine: str = field(default="auto", metadata=choices("finetune_predictor.modeling.evaluation", "ENGINES"))
    max_lora_rank: int | None = field(default=None, metadata=at_least(1))
    label_scoring: str = field(default="sum",
                               metadata=choices("finetune_predictor.modeling.evaluation", "LABEL_SCORING"))
    reuse_baseline: bool = True


# --- the other groups -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreflightSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "preflight"
    output_dirs: tuple[str, ...] = ()
    memory_margin: float = field(default=1.2, metadata=at_least(1.0))
    min_free_disk_gb: float = field(default=1.0, metadata=at_least(0.0))


@dataclass(frozen=True)
class MetaFeaturesSettings(SettingsGroup):
    """The keys of ``meta_features`` (and of ``sensitivity.meta_features``); ``meta_features.ProbeSettings``
    is what the features are computed with."""

    PREFIX: typing.ClassVar[str] = "meta_features"
    sample_size: int = field(default=64, metadata=at_least(2))
    probe_steps: int = field(default=20, metadata=at_least(0))
    probe_batch_size: int | None = field(default=None, metadata=at_least(1))
    knn: int = field(default=10, metadata=at_least(1))
    seed: int = 0
    cache: bool = True
    cache_dir: str | None = None


@dataclass(frozen=True)
class RankSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "rank"
    candidates: str | None = None
    top_reasons: int = field(default=3, metadata=at_least(1))
    order_by: str = field(default="auto", metadata=choices("finetune_predictor.prediction.ranking", "RANK_ORDERS"))


@dataclass(frozen=True)
class ForecastSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "forecast"
    experiment_name: str = "finetune_predictor"
    target_column: str = "finetuned_primary"
    curve_family: str = field(default="auto", metadata=one_of("auto", "pow2", "pow3", "loglinear", "carry_forward"))
    interval_level: float = field(default=0.9, metadata=between(0.0, 1.0))
    min_sizes: int = field(default=3, metadata=at_least(2))


@dataclass(frozen=True)
class ArchiveRunsSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "archive_runs"
    experiment_name: str = "finetune_predictor"


@dataclass(frozen=True)
class PredictorParams(SettingsGroup):
    """The keys of ``predictor``; ``predictor.PredictorSettings`` is what the predictor trains with (it also
    checks the candidate names)."""

    PREFIX: typing.ClassVar[str] = "predictor"
    table_path: str | None = None
    experiment_name: str | None = "finetune_predictor"  # null: the runs archive alone, no tracking store
    target_column: str = "finetuned_primary"
    group_column: str | None = None  # the single-column spelling of an external table's group
    group_columns: tuple[str, ...] | str = ("dataset_family", "source_corpus", "model", "task")
    source_corpora: dict[str, str] | None = None  # family -> the corpus whose texts it shares
    feature_prefix: str = "mf_"
    feature_columns: tuple[str, ...] = ()
    n_folds: int = field(default=5, metadata=at_least(2))
    min_runs: int = field(default=30, metadata=at_least(1))
    shap_mass: float = field(default=0.9, metadata=between(0.0, 1.0, closed_high=True))
    interval_alpha: float = field(default=0.1, metadata=between(0.0, 1.0))
    seed: int = 0
    candidates: tuple[str, ...] = ()
    lightgbm: dict[str, Any] | None = None


@dataclass(frozen=True)
class SensitivityParams(SettingsGroup):
    """The keys of ``sensitivity`` and their types; the grid (``pipelines/sensitivity/grid.py``) checks how
    the axes combine."""

    PREFIX: typing.ClassVar[str] = "sensitivity"
    executor: str = field(default="sequential", metadata=one_of("sequential", "ray"))
    strategy: str = field(default="grid", metadata=one_of("grid", "forecast"))
    forecast_interval_level: float = field(default=0.9, metadata=between(0.0, 1.0))
    ray_address: str | None = None
    gpus_per_run: float = field(default=1, metadata=at_least(0))
    models: tuple[str, ...] | str | None = None
    train_per_class: tuple[int, ...] | int = (25, 50, 100)
    learning_rates: tuple[float, ...] | float = (3e-4,)
    lora: Any = None
    num_train_epochs: tuple[float, ...] | float = (3,)
    seeds: tuple[int, ...] | int = (42,)
    data_variants: Any = None
    test_per_class: int = field(default=50, metadata=at_least(1))
    validation_per_class: int = field(default=0, metadata=at_least(0))
    evaluation_batch_size: int | None = field(default=None, metadata=at_least(1))
    output_dir: str = "data/06_models/sweeps"
    meta_features: MetaFeaturesSettings | None = None
    wait_for_others_h: float = field(default=12.0, metadata=at_least(0))


@dataclass(frozen=True)
class CandidateStudyParams(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "candidate_study"
    candidates: tuple[str, ...] = ()  # data variant names of the sweep
    train_size: int | None = field(default=None, metadata=at_least(1))
    test_sha256: str | None = None
    configuration: dict[str, Any] = field(default_factory=dict)  # run params the study's runs share
    experiment_name: str = "finetune_predictor"


@dataclass(frozen=True)
class ReleaseSettings(SettingsGroup):
    PREFIX: typing.ClassVar[str] = "release"
    run_id: str | None = None
    experiment_name: str = "finetune_predictor"
    output_dir: str = "data/06_models/releases"
    variants: tuple[str, ...] = field(default=("hf_merged", "f16", "q8_0", "q4_k_m"),
                                      metadata=choices("finetune_predictor.modeling.release", "VARIANTS"))
    max_records: int | None = field(default=None, metadata=at_least(1))
    logit_check_records: int = field(default=4, metadata=at_least(1))
    logits_atol: float | None = field(default=None, metadata=at_least(0.0))
    benchmark_prompts: int = field(default=8, metadata=at_least(1))
    benchmark_new_tokens: int = field(default=32, metadata=at_least(1))
    threads: int | None = field(default=None, metadata=at_least(1))
    gpu_layers: int | None = field(default=None, metadata=at_least(0))
    isolate: bool = True
    converter_dir: str | None = None
    log_model_files: bool = False
    disk_margin: float = field(default=1.1, metadata=at_least(1.0))


GROUPS: dict[str, type] = {"data": DataSettings, "model": ModelSettings, "training": TrainingSettings,
                           "evaluation": EvaluationSettings, "preflight": PreflightSettings,
                           "meta_features": MetaFeaturesSettings, "rank": RankSettings, "forecast": ForecastSettings,
                           "predictor": PredictorParams, "sensitivity": SensitivityParams,
                           "candidate_study": CandidateStudyParams, "release": ReleaseSettings,
                           "archive_runs": ArchiveRunsSettings}


def _registry_problems(registry: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    from finetune_predictor.modeling.models import ModelEntry

    problems = []
    for name in registry or {}:
        try:
            ModelEntry.from_registry(str(name), dict(registry))
        except (TypeError, ValueError) as error:
            problems.append((f"model_registry.{name}", str(error)))
    return problems


def parameter_problems(parameters: Mapping[str, Any], groups: list[str] | None = None,
                       unchecked: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """Every problem with ``parameters`` (all groups, or ``groups``): ``(setting, message)`` pairs.

    A group without a schema close to a known name (``dat``) is a typo; any other one is passed to
    ``unchecked`` (a new group whose keys nobody checks yet) and not refused.
    """
    problems: list[tuple[str, str]] = []
    for group in groups or list(parameters):
        values = parameters.get(group)
        if group == "model_registry":
            problems.extend(_registry_problems(values))
        elif group in GROUPS:
            if values is not None and not isinstance(values, Mapping):
                problems.append((group, f"{group} must be a mapping of settings, got {values!r}"))
                continue
            problems.extend(group_problems(GROUPS[group], values, group)[0])
        elif difflib.get_close_matches(group, [*GROUPS, "model_registry"], n=1, cutoff=0.8):
            close = difflib.get_close_matches(group, [*GROUPS, "model_registry"], n=1, cutoff=0.8)[0]
            problems.append((group, f"Unknown parameter group {group!r} (did you mean {close}?); "
                                    f"groups: {', '.join(sorted([*GROUPS, 'model_registry']))}"))
        elif unchecked is not None:
            unchecked(group)
    return problems


def check_parameters(parameters: Mapping[str, Any], groups: list[str] | None = None) -> None:
    """Raise :class:`SettingsError` naming every problem of :func:`parameter_problems`."""
    problems = parameter_problems(parameters, groups)
    if problems:
        raise SettingsError(problems)
