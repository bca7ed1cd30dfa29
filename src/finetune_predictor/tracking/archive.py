"""The runs archive: every finished fine-tune this project made, in one committed, typed CSV.

An MLflow store lives and dies with its machine; the outcome predictor needs runs from many machines and
sessions. ``data/01_raw/runs_archive/runs.csv`` keeps one row per finished fine-tune: its configuration, task,
family, base model and its content hash, size, seed, ``replicate_key``, every ``mf_*`` meta-feature (with their
cost), the task's metrics for the base model, the fine-tune, the classical baseline and the validation split,
and provenance (git sha, CPU, ISA, precision actually used, library versions, wall time, MLflow run id, test set
hash). No weights, no texts of records. The schema is :mod:`finetune_predictor.tracking.archive_schema`.

:func:`append` is the one rule for what enters: ``archive_runs`` uses it to grow the file, and the predictor to
lay the store's newer runs over the archive (:func:`with_store`), so both count, type and refuse runs alike.
The predictor reads the result through :func:`as_runs_table`, under the names of
:func:`finetune_predictor.tracking.runs_table` (configuration params as ``param_<name>``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune_predictor.errors import UserFacingError
from finetune_predictor.redaction import redact
from finetune_predictor.tracking.archive_schema import (
    ARCHIVE_PATH,
    COLUMNS,
    CONFIG_KEY,
    PARAM,
    PER_LABEL_METRIC,
    RUN_ID,
    ArchiveSchemaError,
    column_dtype,
    column_spec,
    is_empty,
    schema_text,
    validate,
)

logger = logging.getLogger(__name__)

__all__ = ["ARCHIVE_PATH", "COLUMNS", "SOURCE_COLUMN", "ArchiveSchemaError", "append", "as_runs_table",
           "is_archive_file", "load", "ordered", "schema_text", "store_rows", "validate", "with_store"]

SOURCE_COLUMN = "runs_source"  # which table a predictor row came from: archive or store
# Two runs of one configuration key are one measurement only where they also ran alike: the key is made from the
# requested settings (precision: auto), so another machine's bf16 or fp32 run of the same sweep shares it.
SAME_MEASUREMENT = (CONFIG_KEY, "precision", "quantization_actual", "model_sha256", "cpu_isa", "gpu")


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


# --- appending -----------------------------------------------------------------------------------------------


def _values_differ(name: str, a: Any, b: Any) -> bool:
    if column_dtype(name) in ("float", "int"):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) != str(b)


def compare(archived: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The columns whose values differ (floats to 1e-9 relative), and the columns only ``new`` has a value for (a
    meta-feature added to a finished run, a column added to the schema later): those fill the archived row."""
    differ, fill = [], []
    for name in sorted(n for n in new if column_dtype(n) is not None):
        a, b = archived.get(name), new.get(name)
        if is_empty(b):
            continue
        if is_empty(a):
            fill.append(name)
        elif _values_differ(name, a, b):
            differ.append(name)
    return differ, fill


def _measurement(row: Mapping[str, Any]) -> tuple[str, ...] | None:
    return None if is_empty(row.get(CONFIG_KEY)) else tuple(str(row.get(name)) for name in SAME_MEASUREMENT)


def missing_provenance(row: Mapping[str, Any]) -> list[str]:
    """The required columns a store row has no value for (a run logged before its record carried them)."""
    return [column.name for column in COLUMNS if column.required and is_empty(row.get(column.name))]


def _admit(row: dict[str, Any], by_id: dict, by_measurement: dict) -> tuple[str, str | None]:
    """What happens to one candidate: ``added``, ``filled``, ``already`` or ``refused`` with the reason."""
    run_id = row[RUN_ID]
    if run_id in by_id:
        differ, fill = compare(by_id[run_id], row)
        if differ:
            return "refused", f"differs from its archived row in {differ[:5]}: never overwritten"
        if fill:
            by_id[run_id] = {**by_id[run_id], **{name: row[name] for name in fill}}
            return "filled", None
        return "already", None
    measurement = _measurement(row)
    if measurement in by_measurement:
        return "refused", (f"configuration key {row[CONFIG_KEY]} ran alike as archived run "
                           f"{by_measurement[measurement]}: one measurement")
    if missing := missing_provenance(row):
        return "refused", f"no value for {missing[:5]} (logged before the run record carried them)"
    try:
        validate(pd.DataFrame([row]), f"run {run_id}")
    except ArchiveSchemaError as error:
        return "refused", str(error)
    by_id[run_id] = row
    if measurement is not None:
        by_measurement[measurement] = run_id
    return "added", None


def append(archive: pd.DataFrame, candidates: pd.DataFrame, where: str = ARCHIVE_PATH) -> tuple[
        pd.DataFrame, dict[str, Any]]:
    """The archive with every candidate row it does not hold yet, and what happened to each candidate.

    A candidate whose run id is archived with the same values is ``already`` there; one that only adds values the
    archived row lacks (meta-features logged after the run finished) ``filled`` it; one with other values is
    refused (an archived row is never overwritten). A candidate that measured what an archived run measured (same
    configuration key, precision, quantization, base model weights and machine class) is refused, as is a row
    missing a required column or failing its type (named, with the run)."""
    archive = validate(archive, where) if len(archive.columns) else archive
    by_id = {row[RUN_ID]: row for row in archive.to_dict("records")}
    by_measurement = {m: row[RUN_ID] for row in archive.to_dict("records") if (m := _measurement(row)) is not None}
    outcomes: dict[str, list[str]] = {"added": [], "filled": [], "already": [], "refused": []}
    refused = []
    for row in candidates.to_dict("records"):
        outcome, reason = _admit(row, by_id, by_measurement)
        outcomes[outcome].append(row[RUN_ID])
        if reason:
            refused.append({"run_id": row[RUN_ID], "reason": reason})
    merged = archive
    if outcomes["added"] or outcomes["filled"]:
        merged = ordered(validate(pd.DataFrame(list(by_id.values())), where))
    report = {name: len(ids) for name, ids in outcomes.items()} | {"refused_runs": refused,
                                                                 "added_runs": outcomes["added"]}
    return merged, report


# --- for the predictor ---------------------------------------------------------------------------------------


def with_store(archived: pd.DataFrame, store: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The archive with the store's runs laid over it by :func:`append` (the same typing, gaps filled, one row
    per run and per measurement), each row marked in :data:`SOURCE_COLUMN` (``archive`` or ``store``)."""
    merged, report = append(archived, store, "the runs archive") if len(store) else (archived, {})
    if len(merged):
        merged = merged.assign(**{SOURCE_COLUMN: np.where(merged[RUN_ID].isin(archived[RUN_ID]), "archive", "store")})
    return merged, report


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


def is_archive_file(path: str | Path) -> bool:
    """Whether a CSV is a runs archive (a ``schema.json`` beside it, or a header with the archive's key and its
    required columns) rather than a free-form runs table (read as it is)."""
    path = Path(path)
    if path.with_name("schema.json").is_file():
        return True
    header = set(pd.read_csv(path, nrows=0).columns)
    return {column.name for column in COLUMNS if column.required} <= header


# --- reading the store ---------------------------------------------------------------------------------------


def rows_from_runs_table(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Archive rows of a :func:`~finetune_predictor.tracking.runs_table` frame; ``runs`` holds the same runs'
    ``run_id``, ``start_time``, ``end_time``, ``run_name`` and ``config_key`` (attributes and tags)."""
    if table.empty:
        return pd.DataFrame(columns=[column.name for column in COLUMNS])
    out = {RUN_ID: table[RUN_ID]}
    for name in table.columns:
        archived = name.removeprefix("param_")
        spec = column_spec(archived)
        if spec is None or PER_LABEL_METRIC.match(archived) or (spec[1] == PARAM) != name.startswith("param_"):
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


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs else pd.Series(None, index=runs.index, dtype=object)


def _refusals(runs: pd.DataFrame, skipped: pd.Series, unfinished: pd.Series) -> list[tuple[str, str]]:
    refused = [(run_id, "skipped by the sweep's forecast: a forecast, never a result")
               for run_id in runs.loc[skipped, "run_id"]]
    return refused + [(run_id, f"status {status}" + (
        ": archived once it finishes (if its process is gone, the next run of its pipeline marks it FAILED)"
        if status == "RUNNING" else "")) for run_id, status in runs.loc[unfinished, ["run_id", "status"]].itertuples(
        index=False)]


def store_rows(experiment_name: str, required: bool = True) -> tuple[pd.DataFrame, list[tuple[str, str]], int]:
    """The tracking store's finished fine-tunes as archive rows, the fine-tunes refused with their reasons
    (FAILED, KILLED, still RUNNING, skipped by a forecast, not evaluated, a second run of one configuration key),
    and how many runs are not fine-tunes (sweep parents, predictor runs). Runs are classified on one search of
    every status (MLflow pages through the store itself); a missing experiment is an error when ``required``."""
    import mlflow

    from finetune_predictor import tracking

    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None and required:
        raise UserFacingError(f"The tracking store {redact(mlflow.get_tracking_uri())} has no experiment "
                              f"{experiment_name!r}", "archive_runs.experiment_name (or MLFLOW_TRACKING_URI)",
                              "name the experiment the runs were logged to, or point MLFLOW_TRACKING_URI at its store")
    runs = mlflow.search_runs([experiment.experiment_id]) if experiment is not None else pd.DataFrame()
    if runs.empty:
        return rows_from_runs_table(pd.DataFrame(), runs), [], 0
    skipped = _column(runs, f"tags.{tracking.SKIPPED_BY_FORECAST_TAG}").notna()
    primary = _column(runs, "metrics.finetuned_primary").notna() | _column(runs, "metrics.finetuned_accuracy").notna()
    fine_tune = skipped | primary | _column(runs, f"tags.{tracking.CONFIG_KEY_TAG}").notna() | _column(
        runs, "params.train_size").notna()
    unfinished = fine_tune & ~skipped & (runs["status"] != "FINISHED")
    refused = _refusals(runs, skipped, unfinished)
    finished = runs[fine_tune & ~skipped & ~unfinished]
    refused += [(run_id, "finished without an evaluation (no finetuned_primary)")
                for run_id in finished.loc[~primary.loc[finished.index], "run_id"]]
    table = tracking.runs_table_of(finished)  # from the same search: one snapshot of the store
    keys = _column(runs, f"tags.{tracking.CONFIG_KEY_TAG}").set_axis(runs["run_id"])
    in_table = set(table[RUN_ID]) if not table.empty else set()
    kept = {keys[run_id]: run_id for run_id in in_table if not is_empty(keys.get(run_id))}
    refused += [(run_id, f"a later finished run of its configuration key ({kept.get(keys.get(run_id), '?')}) is "
                 "the one kept") for run_id in finished.loc[primary.loc[finished.index], "run_id"]
                if run_id not in in_table]
    meta = pd.DataFrame({RUN_ID: runs["run_id"], "start_time": runs["start_time"], "end_time": runs["end_time"],
                         "run_name": _column(runs, "tags.mlflow.runName"), CONFIG_KEY: keys.to_numpy()})
    return rows_from_runs_table(table.reset_index(drop=True), meta), refused, int((~fine_tune).sum())
