"""The runs archive's schema (``data/01_raw/runs_archive/runs.csv``): each column's type, unit, meaning and where
the tracking store keeps it, and :func:`validate`, which types an archive and refuses a missing, mistyped, empty
or unknown column, or a run archived twice, by name (with the CSV line).

:data:`COLUMNS` are the named columns (``required`` ones every row carries); :data:`FAMILIES` the columns known
by pattern (every ``mf_*`` meta-feature, each side's task metrics, optional params). Exact names are matched
before patterns, so a param named like a metric family (``baseline_reused``) keeps its own type.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from finetune_predictor.errors import UserFacingError

ARCHIVE_PATH = "data/01_raw/runs_archive/runs.csv"
SCHEMA_VERSION = 1
RUN_ID, CONFIG_KEY = "run_id", "config_key"
# The sources of a column in the MLflow store: a run attribute or tag, a param, a metric, or derived.
RUN, PARAM, METRIC = "run", "param", "metric"
# Metrics named after one label of one task (f1_fake, support_real, predicted_share_pants-fire) mean nothing
# across tasks and widen the table by dozens of columns per label set: the archive keeps the task-level figures.
PER_LABEL_METRIC = re.compile(r"^(baseline|finetuned|classical|validation)_(gen_)?(precision|recall|f1|support|"
                        r"predicted_share)_(?!macro$).+")


@dataclass(frozen=True)
class Column:
    """One archive column: name, type (``str``, ``int`` or ``float``), unit, meaning, where the store keeps it,
    and whether every row must have a value."""

    name: str
    dtype: str
    unit: str
    meaning: str
    source: str = PARAM
    required: bool = True


def _c(name: str, dtype: str, unit: str, meaning: str, source: str = PARAM, required: bool = True) -> Column:
    return Column(name, dtype, unit, meaning, source, required)


COLUMNS: tuple[Column, ...] = (
    _c(RUN_ID, "str", "", "MLflow run id (the archive's key)", RUN),
    _c(CONFIG_KEY, "str", "", "the sweep's resume key (configuration + data + settings + seed); empty for a "
       "mini_test100 run", RUN, required=False),
    _c("run_name", "str", "", "MLflow run name", RUN),
    _c("start_time", "str", "ISO 8601 UTC", "when the run started", RUN),
    _c("wall_time_s", "float", "s", "run start to end, evaluation and meta-features included", RUN),
    _c("task", "str", "", "task type (binary_classification, multiclass_classification, qa, structured)"),
    _c("dataset_family", "str", "", "the data's family: grouped splits leave one family out"),
    _c("dataset", "str", "", "training source (the bundled generator's name or a file path)"),
    _c("model_name", "str", "", "base model (registry name, HF id or path)"),
    _c("model_sha256", "str", "sha256", "content hash of the base model's folder (weights, config, tokenizer)"),
    _c("replicate_key", "str", "", "hash of the configuration without the seed: equal for seed replicates"),
    _c("seed", "int", "", "training seed"),
    _c("train_size", "int", "examples", "training examples"),
    _c("test_size", "int", "examples", "test examples (one fixed set per sweep)"),
    _c("test_sha256", "str", "sha256", "content hash of the test set"),
    _c("train_sha256", "str", "sha256", "content hash of the training subset"),
    _c("learning_rate", "float", "", "peak learning rate"),
    _c("lora_r", "int", "", "LoRA rank"),
    _c("lora_alpha", "int", "", "LoRA alpha"),
    _c("lora_dropout", "float", "", "LoRA dropout"),
    _c("num_train_epochs", "float", "epochs", "training epochs"),
    _c("max_steps", "int", "steps", "step limit (-1 = epochs decide)"),
    _c("effective_batch_size", "int", "examples", "micro-batch x accumulation"),
    _c("max_length", "int", "tokens", "prompt + answer length limit"),
    _c("data_variant", "str", "", "data-quality variant (clean, noisy30, dup50, ...)"),
    _c("label_noise", "float", "share", "share of training targets corrupted"),
    _c("duplicate_rate", "float", "share", "share of training records replaced by copies"),
    _c("positive_share", "float", "share", "share of the positive class (0.5 = balanced)"),
    _c("precision", "str", "", "precision the fine-tune actually ran with (fp32, bf16, fp16, 4bit-nf4)"),
    _c("quantization_actual", "str", "", "quantization actually used (none, 4bit)"),
    _c("device", "str", "", "cpu or cuda"),
    _c("engine", "str", "", "evaluation engine (hf, vllm)"),
    _c("records_truncated", "int", "records", "training inputs shortened to fit max_length"),
    _c("git_sha", "str", "", "the project's commit (+dirty when tracked files differed)"),
    _c("cpu_model", "str", "", "CPU model name"),
    _c("cpu_isa", "str", "", "the CPU's widest extension (amx_bf16, avx512_bf16, avx512, avx2, baseline)"),
    _c("torch_cpu_capability", "str", "", "the ISA PyTorch's CPU kernels dispatched to"),
    _c("gpu", "str", "", "GPU name or none"),
    _c("torch_version", "str", "", "PyTorch version"),
    _c("transformers_version", "str", "", "transformers version"),
    _c("peft_version", "str", "", "PEFT version"),
    _c("trl_version", "str", "", "TRL version"),
    _c("finetuned_primary", "float", "share", "the task's primary metric of the fine-tune on the test set", METRIC),
    _c("baseline_primary", "float", "share", "the same metric of the base model", METRIC),
    _c("classical_primary", "float", "share", "the same metric of the cheap classical baseline", METRIC,
       required=False),
    _c("validation_primary", "float", "share", "the fine-tune's primary metric on the validation split", METRIC,
       required=False),
    _c("train_runtime_s", "float", "s", "training time", METRIC),
    _c("train_peak_memory_mb", "float", "MiB", "peak memory while training", METRIC, required=False),
)
# Optional columns by name pattern (pattern, type, where the store keeps it, meaning): every meta-feature, the task's
# metrics of each side, and the configuration and provenance params not every run has.
FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    (r"^(primary_gain|accuracy_gain|inference_runtime_s|train_loss|validation_loss|test_loss)$", "float", METRIC,
     "gain over the base model, evaluation time (s), last training / held-out loss"),
    (r"^(data_source|quantization_requested|test_dataset|lora_target_modules|python_version|accelerate_version|"
     r"mlflow_version|kedro_version|sweep_name|group_by_length|adapter_sha256|baseline_reused|baseline_key|"
     r"baseline_source_run_id|oom_fallbacks|gradient_checkpointing_actual|model_source|supersedes)$", "str", PARAM,
     "more configuration and provenance (the run record's names)"),
    (r"^(test_records_truncated|train_per_class|oom_retries|per_device_train_batch_size_actual|"
     r"gradient_accumulation_steps_actual|resumed_from_step)$", "int", PARAM, "counts of the run record"),
    (r"^mf_", "float", METRIC, "a meta-feature logged before training (mf_feature_seconds, mf_probe_seconds: "
     "their cost in s)"),
    (r"^(baseline|finetuned|classical|validation)_", "float", METRIC, "a task metric of that side on its split"),
)
BY_NAME = {column.name: column for column in COLUMNS}


class ArchiveSchemaError(UserFacingError):
    """An archive file whose columns do not follow the schema."""


def column_spec(name: str) -> tuple[str, str] | None:
    """The column's type and store source in the schema; None for a column the schema does not know."""
    if name in BY_NAME:
        return BY_NAME[name].dtype, BY_NAME[name].source
    return next(((dtype, source) for pattern, dtype, source, _ in FAMILIES if re.match(pattern, name)), None)


def column_dtype(name: str) -> str | None:
    spec = column_spec(name)
    return spec[0] if spec else None


def schema() -> dict[str, Any]:
    """The schema as JSON (written beside the archive as ``schema.json``)."""
    return {"schema_version": SCHEMA_VERSION, "key": [RUN_ID, CONFIG_KEY],
            "columns": [asdict(column) for column in COLUMNS],
            "families": [{"pattern": p, "dtype": d, "source": source, "meaning": m} for p, d, source, m in FAMILIES]}


def validate(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The archive typed by its schema; a missing required column, an empty required value, an unknown column
    or a value of the wrong type is one :class:`ArchiveSchemaError` naming the column (and the CSV line)."""
    missing = [column.name for column in COLUMNS if column.required and column.name not in frame]
    if missing:
        raise ArchiveSchemaError(f"{where} has no column {missing[0]!r}" + (f" (nor {missing[1:]})" if missing[1:]
                                                                           else ""), where,
                                 "an archive carries every required column of tracking.archive.COLUMNS "
                                 "(see schema.json beside it)")
    typed = {}
    for name in frame.columns:
        dtype = column_dtype(name)
        if dtype is None:
            raise ArchiveSchemaError(f"{where} has a column {name!r} the archive schema does not know", where,
                                     "remove it, or add it to tracking.archive.COLUMNS / FAMILIES with its meaning")
        typed[name] = _typed(frame[name], name, dtype, where)
    out = pd.DataFrame(typed, index=frame.index)
    twice = out[RUN_ID].duplicated()
    if twice.any():
        line = int(out.index[twice][0]) + 2
        raise ArchiveSchemaError(f"{where}:{line}: run {out.loc[twice, RUN_ID].iloc[0]} is archived twice",
                                 f"{where}:{line}", "keep one row per run id (a merge of two archives can repeat one)")
    for column in COLUMNS:
        if column.required and column.name in out and out[column.name].isna().any():
            line = int(out.index[out[column.name].isna()][0]) + 2  # the header is line 1
            raise ArchiveSchemaError(f"{where}:{line}: column {column.name!r} is empty", f"{where}:{line}",
                                     "every row carries the required columns; re-archive the run from its store")
    return out


def _typed(values: pd.Series, name: str, dtype: str, where: str) -> pd.Series:
    if dtype == "str":
        return values.astype("string").where(values.notna(), None).astype(object)
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if dtype == "int":
        bad |= numeric.notna() & (numeric != numeric.round())
    if bad.any():
        line = int(values.index[bad][0]) + 2
        raise ArchiveSchemaError(f"{where}:{line}: column {name!r} holds {values[bad].iloc[0]!r}, not a {dtype}",
                                 f"{where}:{line}", f"write a {dtype} there (or leave it empty if the column is "
                                 "optional)")
    return numeric.astype("Int64") if dtype == "int" else numeric.astype(float)


def schema_text() -> str:
    """``schema.json`` beside the archive."""
    return json.dumps(schema(), indent=1) + "\n"


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == ""
