"""The runs archive: every finished fine-tune this project made, in one committed, typed CSV.

An MLflow store lives and dies with its machine; the outcome predictor needs runs from many machines and
sessions. ``data/01_raw/runs_archive/runs.csv`` keeps one row per finished fine-tune: its configuration, task,
family, base model and its content hash, size, seed, ``replicate_key``, every ``mf_*`` meta-feature (with their
cost), the task's metrics for the base model, the fine-tune, the classical baseline and the validation split,
and provenance (git sha, CPU, ISA, precision actually used, library versions, wall time, MLflow run id, test set
hash). No weights, no texts of records.

:data:`COLUMNS` is the schema: each column's type, unit and meaning; metric families (``mf_*``,
``finetuned_*``, ...) are :data:`FAMILIES`. :func:`validate` refuses a missing or mistyped column by name. The
predictor reads the archive through :func:`as_runs_table`, which gives it the column names of
:func:`finetune_predictor.tracking.runs_table` (configuration params as ``param_<name>``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune_predictor.errors import UserFacingError

ARCHIVE_PATH = "data/01_raw/runs_archive/runs.csv"
SCHEMA_VERSION = 1
RUN_ID, CONFIG_KEY = "run_id", "config_key"
# The sources of a column in the MLflow store: a run attribute or tag, a param, a metric, or derived.
RUN, PARAM, METRIC = "run", "param", "metric"
# Metrics named after one label of one task (f1_fake, support_real, predicted_share_pants-fire) mean nothing
# across tasks and widen the table by dozens of columns per label set: the archive keeps the task-level figures.
_PER_LABEL = re.compile(r"^(baseline|finetuned|classical|validation)_(gen_)?(precision|recall|f1|support|"
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
    (r"^mf_", "float", METRIC, "a meta-feature logged before training (mf_feature_seconds, mf_probe_seconds: "
     "their cost in s)"),
    (r"^(baseline|finetuned|classical|validation)_", "float", METRIC, "a task metric of that side on its split"),
    (r"^(primary_gain|accuracy_gain|inference_runtime_s|train_loss|validation_loss|test_loss)$", "float", METRIC,
     "gain over the base model, evaluation time (s), last training / held-out loss"),
    (r"^(data_source|quantization_requested|test_dataset|lora_target_modules|python_version|accelerate_version|"
     r"mlflow_version|kedro_version|sweep_name|group_by_length|adapter_sha256|baseline_reused|oom_fallbacks|"
     r"gradient_checkpointing_actual)$", "str", PARAM, "more configuration and provenance (the run record's names)"),
    (r"^(test_records_truncated|train_per_class|oom_retries|per_device_train_batch_size_actual|"
     r"gradient_accumulation_steps_actual)$", "int", PARAM, "counts of the run record (the run record's names)"),
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


def load(path: str | Path) -> pd.DataFrame:
    """The archive at ``path`` (an empty archive when the file does not exist), validated."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=[column.name for column in COLUMNS])
    return validate(pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]), str(path))


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Schema columns first in schema order, then the families' columns sorted; rows by start time and run id."""
    known = [column.name for column in COLUMNS if column.name in frame]
    rest = sorted(set(frame.columns) - set(known))
    return frame[known + rest].sort_values(["start_time", RUN_ID], kind="stable").reset_index(drop=True)


# --- from the tracking store ----------------------------------------------------------------------------------


def rows_from_runs_table(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Archive rows of a :func:`~finetune_predictor.tracking.runs_table` frame; ``runs`` holds the same runs'
    ``run_id``, ``start_time``, ``end_time``, ``run_name`` and ``config_key`` (attributes and tags)."""
    if table.empty:
        return pd.DataFrame(columns=[column.name for column in COLUMNS])
    out = {RUN_ID: table[RUN_ID]}
    for name in table.columns:
        archived = name.removeprefix("param_")
        spec = column_spec(archived)
        if spec is None or _PER_LABEL.match(archived) or (spec[1] == PARAM) != name.startswith("param_"):
            continue  # not in the schema: a per-label metric, a path on the store's machine, a bookkeeping param
        out[archived] = table[name]
    frame = pd.DataFrame(out)
    for name in ("task", "dataset_family", "replicate_key", "dataset"):
        frame[name] = table[name]
    timing = runs.set_index(RUN_ID).reindex(frame[RUN_ID])
    frame["run_name"] = timing["run_name"].to_numpy()
    frame[CONFIG_KEY] = timing[CONFIG_KEY].to_numpy()
    start, end = pd.to_datetime(timing["start_time"], utc=True), pd.to_datetime(timing["end_time"], utc=True)
    frame["start_time"] = start.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()
    frame["wall_time_s"] = ((end - start).dt.total_seconds()).round(1).to_numpy()
    return frame.reset_index(drop=True)


def missing_provenance(row: Mapping[str, Any]) -> list[str]:
    """The required columns a store row has no value for (a run logged before its record carried them)."""
    return [column.name for column in COLUMNS if column.required and _empty(row.get(column.name))]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == ""


# --- appending -----------------------------------------------------------------------------------------------


def differing_columns(archived: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Columns both rows carry whose values differ (floats to 1e-9 relative; a value only one side has is not a
    difference: a column added to the schema later is filled for new runs only)."""
    out = []
    for name in sorted(set(archived) & set(new)):
        a, b = archived[name], new[name]
        if _empty(a) or _empty(b):
            continue
        if column_dtype(name) in ("float", "int"):
            if not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12):
                out.append(name)
        elif str(a) != str(b):
            out.append(name)
    return out


def append(archive: pd.DataFrame, candidates: pd.DataFrame, where: str = ARCHIVE_PATH) -> tuple[
        pd.DataFrame, dict[str, Any]]:
    """The archive with every candidate row it does not hold yet, and what happened to each candidate.

    A candidate whose run id is archived with the same values is ``already``; with other values it is refused
    (an archived row is never overwritten). A candidate whose configuration key another archived run holds is
    refused too (the same configuration and seed measured twice: the runs table keeps one per key). A row
    missing a required column is refused naming the columns."""
    archive = validate(archive, where) if len(archive.columns) else archive
    by_id = {row[RUN_ID]: row for row in archive.to_dict("records")}
    by_key = {row[CONFIG_KEY]: row[RUN_ID] for row in archive.to_dict("records") if not _empty(row.get(CONFIG_KEY))}
    added, already, refused = [], [], []
    for row in candidates.to_dict("records"):
        run_id, key = row[RUN_ID], row.get(CONFIG_KEY)
        if run_id in by_id:
            differ = differing_columns(by_id[run_id], row)
            if differ:
                refused.append((run_id, f"differs from its archived row in {differ[:5]}: never overwritten"))
            else:
                already.append(run_id)
        elif not _empty(key) and key in by_key:
            refused.append((run_id, f"configuration key {key} is archived as run {by_key[key]}"))
        elif missing := missing_provenance(row):
            refused.append((run_id, f"no value for {missing[:5]} (logged before the run record carried them)"))
        else:
            added.append(row)
            by_id[run_id] = row
            if not _empty(key):
                by_key[key] = run_id
    merged = archive if not added else pd.concat([archive, validate(pd.DataFrame(added), "the store's runs")],
                                                 ignore_index=True)
    report = {"added": len(added), "already": len(already), "refused": len(refused),
              "refused_runs": [{"run_id": run_id, "reason": reason} for run_id, reason in refused]}
    return ordered(merged) if len(merged) else merged, report


# --- for the predictor ---------------------------------------------------------------------------------------


def as_runs_table(archive: pd.DataFrame) -> pd.DataFrame:
    """The archive under the runs table's names: params as ``param_<name>``, ``model`` beside ``model_name``, and
    ``task``, ``dataset_family``, ``dataset``, ``replicate_key`` as they are (what the predictor's code reads)."""
    columns = {RUN_ID: archive[RUN_ID]}
    for name in archive.columns:
        spec = column_spec(name)
        if name != RUN_ID and spec is not None:
            columns[f"param_{name}" if spec[1] == PARAM else name] = archive[name]
    for name in ("task", "dataset_family", "dataset", "replicate_key"):
        columns[name] = archive[name]
    columns["model"] = archive["model_name"]
    if SOURCE_COLUMN in archive:
        columns[SOURCE_COLUMN] = archive[SOURCE_COLUMN]
    table = pd.DataFrame(columns)
    return table.replace({pd.NA: np.nan})


SOURCE_COLUMN = "runs_source"  # which table a predictor row came from: archive or store


def with_store(archived: pd.DataFrame, store: pd.DataFrame) -> pd.DataFrame:
    """The archive's rows and the store's rows it does not hold (deduplicated by run id: an archived run that is
    still in the store counts once, as archived), each marked in :data:`SOURCE_COLUMN`."""
    fresh = store[~store[RUN_ID].isin(archived[RUN_ID])] if len(store) else store
    parts = [frame.assign(**{SOURCE_COLUMN: source}) for frame, source in ((archived, "archive"), (fresh, "store"))
             if len(frame)]
    return pd.concat(parts, ignore_index=True) if parts else archived.assign(**{SOURCE_COLUMN: []})


def is_archive_file(path: str | Path) -> bool:
    """Whether a CSV is a runs archive (its header has the archive's key) rather than a free-form runs table."""
    with open(path, encoding="utf-8") as handle:
        return RUN_ID in handle.readline().strip().split(",")


def schema_text() -> str:
    """``schema.json`` beside the archive."""
    return json.dumps(schema(), indent=1) + "\n"


# --- reading the store ---------------------------------------------------------------------------------------


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs else pd.Series(None, index=runs.index, dtype=object)


def store_rows(experiment_name: str) -> tuple[pd.DataFrame, list[tuple[str, str]], int]:
    """The tracking store's finished fine-tunes as archive rows, the fine-tunes refused with their reasons
    (FAILED, KILLED, still RUNNING, skipped by a forecast, a second run of one configuration key), and how
    many runs are not fine-tunes at all (sweep parents, predictor runs). Every status is read in one search
    (MLflow pages through the store itself)."""
    import mlflow

    from finetune_predictor import tracking

    experiment = mlflow.get_experiment_by_name(experiment_name)
    runs = mlflow.search_runs([experiment.experiment_id]) if experiment is not None else pd.DataFrame()
    if runs.empty:
        return rows_from_runs_table(pd.DataFrame(), runs), [], 0
    skipped = _column(runs, f"tags.{tracking.SKIPPED_BY_FORECAST_TAG}").notna()
    fine_tune = (skipped | _column(runs, f"tags.{tracking.CONFIG_KEY_TAG}").notna()
                 | _column(runs, "metrics.finetuned_primary").notna() | _column(runs, "params.train_size").notna())
    refused = [(run_id, "skipped by the sweep's forecast: a forecast, never a result")
               for run_id in runs.loc[skipped, "run_id"]]
    unfinished = fine_tune & ~skipped & (runs["status"] != "FINISHED")
    refused += [(run_id, f"status {status}" + (": archived once it finishes" if status == "RUNNING" else ""))
                for run_id, status in runs.loc[unfinished, ["run_id", "status"]].itertuples(index=False)]
    table = tracking.runs_table(experiment_name)
    table = table[~table[RUN_ID].isin(runs.loc[skipped, "run_id"])] if not table.empty else table
    finished = set(runs.loc[fine_tune & ~skipped & ~unfinished, "run_id"])
    kept = set(table[RUN_ID]) if not table.empty else set()
    refused += [(run_id, "no finetuned_primary, or another finished run of its configuration key is the one kept")
                for run_id in sorted(finished - kept)]
    meta = pd.DataFrame({RUN_ID: runs["run_id"], "start_time": runs["start_time"], "end_time": runs["end_time"],
                         "run_name": _column(runs, "tags.mlflow.runName"),
                         CONFIG_KEY: _column(runs, f"tags.{tracking.CONFIG_KEY_TAG}")})
    return rows_from_runs_table(table.reset_index(drop=True), meta), refused, int((~fine_tune).sum())
