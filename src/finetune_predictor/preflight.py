"""Preflight: everything that can make a fine-tune fail, checked in seconds before any training starts.

Each check gives a verdict (PASS, WARN or FAIL) with the reason in numbers. The memory and disk figures
are estimates from the model's size and the run's settings, made before any weights load, with a
safety margin, so that a run that cannot fit is refused up front instead of dying hours in (the memory
estimate and what is free: ``modeling/memory_estimate.py``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.data.records import RecordError, SourceSpec, read_records
from finetune_predictor.data.splits import deduplicate
from finetune_predictor.data.synthetic_events import iter_events
from finetune_predictor.data.synthetic_news import DEFAULT_DIFFICULTY, bayes_ceiling
from finetune_predictor.errors import UserFacingError, verbose_requested
from finetune_predictor.modeling.hardware import ComputePlan
from finetune_predictor.modeling.memory_estimate import (
    GIB,
    MemoryEstimate,
    available_ram_bytes,
    available_vram_bytes,
    count_params_b,
    estimate_training_memory,
    model_shape,
)
from finetune_predictor.modeling.model_session import ModelSession, compute_plan, open_session
from finetune_predictor.modeling.models import ModelEntry, ModelNotFoundError, ResolvedModel
from finetune_predictor.redaction import redact
from finetune_predictor.settings_schema import TrainingSettings, parameter_problems
from finetune_predictor.tasks import OPEN_TASKS, declared_labels, task_type

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"

logger = logging.getLogger(__name__)


class PreflightError(UserFacingError, RuntimeError):
    """At least one preflight check failed. The verdict table has been printed (and saved) already, so the
    message names the failed checks only instead of repeating the table."""

    def __init__(self, failed: list[str]) -> None:
        super().__init__(f"preflight FAILED: {len(failed)} check(s) failed ({', '.join(failed)})",
                         "the preflight verdict above (saved in data/08_reporting/preflight_verdict.csv/<run>/)",
                         "fix what each FAIL row says, then run again; `kedro run --pipeline=preflight` checks "
                         "in seconds without training")
        self.failed = failed


@dataclass
class Check:
    name: str
    status: str
    detail: str


def _guard(name: str, check: Callable[[], Check]) -> Check:
    """``check()``, or a FAIL row with the error (and its fix, for an error the user can fix)."""
    try:
        return check()
    except (RecordError, ModelNotFoundError, ValueError, OSError, UserFacingError) as error:
        fix = f" (fix: {error.fix})" if isinstance(error, UserFacingError) and error.fix else ""
        if not isinstance(error, UserFacingError | OSError):
            # A bare ValueError may be a bad input or a bug of ours: the row says so, --verbose keeps the traceback.
            logger.debug("preflight check %s raised", name, exc_info=error)
            if verbose_requested():
                logger.error("preflight check %s raised", name, exc_info=error)
            fix = f"{fix} (an unexpected {type(error).__name__}: run with --verbose for its traceback)"
        return Check(name, FAIL, f"{error}{fix}")


def _check_model(name: str, model: dict[str, Any], registry: dict[str, Any],
                 precision: str) -> tuple[Check, ModelSession | None]:
    try:
        session = open_session(model, registry, "preflight", precision)
    except (ModelNotFoundError, ValueError, OSError) as error:
        return Check(name, FAIL, str(error)), None
    return Check(name, PASS, f"{session.resolved.source}: {session.resolved.path}"), session


def _check_template(session: ModelSession, labels: list[str] | None, open_task: bool = False) -> Check:
    """Every answer (a classification task's labels, or sample targets of an open task) renders and decodes
    back to itself after the assistant header; two labels never tokenise alike."""
    formatter = session.formatter
    labels = labels or ["yes", "no"]  # labels come from the data: check that answers render at all
    prompt = formatter.prompt_ids("Is this text fake or legitimate?", "A short test sentence.")
    answers = {label: formatter.answer_ids(label) for label in labels}
    decoded = {label: formatter.tokenizer.decode(ids) for label, ids in answers.items()}
    for label, text in decoded.items():
        if not text.startswith(label):
            return Check("tokenizer and template", FAIL, f"answer {label!r} decodes to {text!r}")
    if not open_task and len({tuple(ids) for ids in answers.values()}) != len(answers):
        return Check("tokenizer and template", FAIL, f"labels {labels} tokenise identically")
    template = "chat template" if formatter.uses_chat_template else "fallback template"
    return Check("tokenizer and template", PASS,
                 f"{template}; prompt {len(prompt)} tokens; answers {decoded}")


def _labels_in_data(data: dict[str, Any], records: pd.DataFrame | None) -> list[str] | None:
    """The answers the template check renders when the parameters name none: a multi-class task's labels as
    its training file has them, or three targets of an open task (the bundled corpus's, without a file)."""
    open_task = task_type(data) in OPEN_TASKS
    if not data.get("path"):
        return [str(r["output"]) for r in iter_events(3, 7)] if task_type(data) == "structured" else None
    if records is None:
        return None
    outputs = records["output"].astype(str)
    return (outputs.head(3).tolist() if open_task else sorted(outputs.unique())) or None


# Rows of the bundled corpus generated to find its longest ones, and rows tokenised (the longest by characters).
_LENGTH_SAMPLE = 2000
_LONGEST_ROWS = 16


def training_records(data: dict[str, Any]) -> pd.DataFrame | None:
    """The training source's records, read once for the template and memory checks (records with problems
    are set aside here; the dataset check reports them under the run's own data.on_invalid). The bundled
    corpus is represented by its first rows; None when there is nothing to read."""
    from finetune_predictor.data.task_data import bundled_records

    try:
        if data.get("path"):
            return read_records(SourceSpec.from_params(data, data["path"]), None, "quarantine").records
        synthetic = dict(data.get("synthetic") or {})
        sample = min(int(synthetic.get("num_records", 24000)), _LENGTH_SAMPLE)
        return bundled_records({**data, "synthetic": {**synthetic, "num_records": sample}})
    except (RecordError, ValueError, OSError):
        return None  # the dataset check says why


def longest_row_tokens(session: ModelSession, records: pd.DataFrame) -> int:
    """Tokens of the longest training row (prompt + answer as the formatter builds it, cut to
    ``model.max_length``): batches are padded to their longest row, so this is the widest batch a run meets."""
    lengths = records["instruction"].str.len() + records["input"].str.len() + records["output"].astype(str).str.len()
    longest = records.loc[lengths.nlargest(_LONGEST_ROWS).index]
    return max(len(session.formatter.training_example(row.instruction, row.input, str(row.output))["input_ids"])
               for row in longest.itertuples(index=False))


def _check_bundled_size(data: dict[str, Any], labels: list[str] | None) -> Check | None:
    """The bundled generator's ``num_records`` against what the split asks for (each label is about an even
    share of the records; a few go as duplicates), or None when it is enough."""
    synthetic = data.get("synthetic") or {}
    records = int(synthetic.get("num_records", 24000))
    strata = len(labels) if labels else 1
    need = int(data["train_per_class"]) + int(data.get("test_per_class") or 0)
    if need * strata <= 0.9 * records:
        return None
    return Check("dataset", FAIL, f"the bundled task has data.synthetic.num_records={records} (about "
                                  f"{records // strata} per {'label' if labels else 'stratum'}); data.train_per_class"
                                  f" + data.test_per_class = {need} per {'label' if labels else 'stratum'}: raise "
                                  "data.synthetic.num_records or lower the sizes")


def _check_data(data: dict[str, Any], labels: list[str] | None) -> Check:
    if task_type(data) in OPEN_TASKS:
        return _check_open_task_data(data)
    if not data.get("path"):
        difficulty = str((data.get("synthetic") or {}).get("difficulty", DEFAULT_DIFFICULTY))
        return _check_bundled_size(data, labels) or Check(
            "dataset", PASS,
            f"bundled generated task, difficulty {difficulty} (Bayes ceiling {bayes_ceiling(difficulty):.1%})")
    need = {label: int(data["train_per_class"]) for label in labels or []}
    details = []
    for key in ("path", "test_path"):
        if not data.get(key):
            continue
        result = read_records(SourceSpec.from_params(data, data[key]), labels, str(data.get("on_invalid", "error")))
        records, duplicates = deduplicate(result.records, str(data.get("duplicates", "drop")))
        counts = records["output"].value_counts().to_dict()
        if key == "path" and labels is None:  # multi-class labels from the data: every one needs examples
            need = {label: int(data["train_per_class"]) for label in counts}
        summary = result.summary()
        details.append(f"data.{key}: {len(records)} usable records {counts}, {summary['records_rejected']} rejected, "
                       f"{duplicates['duplicates_removed']} duplicates removed")
        if key == "path" and data.get("test_per_class") is not None and not data.get("test_path"):
            need = {label: n + int(data["test_per_class"]) for label, n in need.items()}
        if key == "path":
            short = {label: (counts.get(label, 0), n) for label, n in need.items() if counts.get(label, 0) < n}
            if short:
                return Check("dataset", FAIL, "; ".join(details) + "; too few examples: " + ", ".join(
                    f"{label!r} has {have}, needs {want}" for label, (have, want) in short.items()))
    return Check("dataset", PASS, "; ".join(details))


def _check_open_task_data(data: dict[str, Any]) -> Check:
    """QA and structured data: enough records for the training and test sizes (``train_per_class`` and
    ``test_per_class`` count examples), and for QA's split by article at least two articles."""
    name = task_type(data)
    if not data.get("path"):
        if name == "qa":
            return Check("dataset", FAIL, "data.task=qa has no bundled data: set data.path to SQuAD JSON and "
                                          "data.format=squad")
        return _check_bundled_size(data, None) or Check(
            "dataset", PASS, "bundled generated structured task (event records: topic, place, figure, source)")
    result = read_records(SourceSpec.from_params(data, data["path"]), None, str(data.get("on_invalid", "error")))
    records, duplicates = deduplicate(result.records, str(data.get("duplicates", "drop")))
    train_n, test_n = int(data["train_per_class"]), data.get("test_per_class")
    need = train_n + (int(test_n) if test_n is not None and not data.get("test_path") else 0)
    groups = records["group"].nunique()
    detail = (f"data.path: {len(records)} usable records in {groups} group(s), {result.summary()['records_rejected']} "
              f"rejected, {duplicates['duplicates_removed']} duplicates removed, "
              f"{result.unanswerable_skipped} unanswerable questions left out")
    if len(records) < need:
        return Check("dataset", FAIL, f"{detail}; too few records: data.train_per_class={train_n} and "
                                      f"data.test_per_class={test_n} need {need}")
    if name == "qa" and not data.get("test_path") and groups < 2 and str(data.get("test_split") or "auto") != "record":
        return Check("dataset", FAIL, f"{detail}; the test split is by article (data.test_split=auto) and needs "
                                      "at least two articles: give data.test_path or set data.test_split=record")
    return Check("dataset", PASS, detail)


def _check_writable(paths: list[str]) -> Check:
    problems = []
    for folder in paths:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".preflight-"):
                pass
        except OSError as error:
            problems.append(f"{path.resolve()}: {error.strerror or error}")
    if problems:
        return Check("output folders writable", FAIL, "; ".join(problems))
    return Check("output folders writable", PASS, ", ".join(paths))


def _check_disk(paths: list[str], need_bytes: float, min_free_gb: float) -> Check:
    existing = Path(paths[0]) if paths else Path.cwd()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    need = max(need_bytes, min_free_gb * GIB)
    detail = f"{free / GIB:.1f} GiB free at {existing.resolve()}, run needs ~{need / GIB:.2f} GiB"
    return Check("free disk", PASS if free >= need else FAIL, detail)


def _check_memory(entry: ModelEntry | None, resolved: ResolvedModel | None, model: dict[str, Any],
                  settings: TrainingSettings, margin: float, longest_row: int | None = None) -> Check:
    """The training step's peak memory against what is free. Rows are as long as the data's longest row
    (``longest_row``, batches are padded to it), at most ``model.max_length``; without data to measure, every
    row is taken at ``model.max_length``."""
    quantization = model.get("quantization", "none")
    plan = compute_plan(model, settings.precision)
    params_b = entry.params_b if entry is not None and entry.params_b else None
    if params_b is None and resolved is not None:
        params_b = count_params_b(resolved)
    if params_b is None:
        return Check("memory", WARN, f"size of {model['name']!r} unknown: set model_registry.<name>.params_b")
    max_length = int(model.get("max_length", 512))
    sequence = min(longest_row, max_length) if longest_row else max_length
    shape = model_shape(resolved)

    def needs(compute_plan: ComputePlan, gradient_checkpointing: bool) -> MemoryEstimate:
        checkpointing = replace(settings, gradient_checkpointing=gradient_checkpointing)
        return estimate_training_memory(params_b, compute_plan, checkpointing, shape, sequence, margin)

    estimate = needs(plan, settings.gradient_checkpointing)
    notes = []
    if quantization == "4bit" and not plan.load_in_4bit:
        notes.append("4-bit QLoRA needs CUDA (bitsandbytes), so this machine would load full precision")
    vram = available_vram_bytes()
    where, free = ("GPU", vram) if plan.device == "cuda" and vram is not None else ("RAM", available_ram_bytes())
    rows = (f"batches of {settings.per_device_train_batch_size} rows of up to {sequence} tokens ("
            + (f"the data's longest row; model.max_length={max_length})" if longest_row else "model.max_length)"))
    verdict = (f"{params_b:g}B params at {plan.precision_name} on {plan.device}, {rows}: needs {estimate.describe()}; "
               f"{free / GIB:.1f} GiB {where} available")
    fits = estimate.total <= free
    if not fits:
        verdict += _how_it_would_fit(plan, settings, needs)
    return Check("memory", PASS if fits else FAIL, "; ".join([verdict, *notes]))


def _how_it_would_fit(plan: ComputePlan, settings: TrainingSettings,
                      needs: Callable[[ComputePlan, bool], MemoryEstimate]) -> str:
    """What would make a run that does not fit fit, as the end of the memory verdict."""
    advice = " -> will not fit"
    if not settings.gradient_checkpointing:
        advice += f"; with training.gradient_checkpointing=true it would need ~{needs(plan, True).total / GIB:.1f} GiB"
    if plan.device == "cpu":
        qlora, qlora_checkpointed = needs(_qlora_plan(), settings.gradient_checkpointing), needs(_qlora_plan(), True)
        advice += (f"; it would fit as QLoRA on a GPU with >= {qlora.total / GIB:.0f} GiB free "
                   f"(model.quantization=4bit; >= {qlora_checkpointed.total / GIB:.0f} GiB with "
                   "training.gradient_checkpointing=true), or "
                   "with a smaller model or a smaller training.per_device_train_batch_size")
    return advice


def _qlora_plan() -> ComputePlan:
    import torch

    return ComputePlan("cuda", torch.bfloat16, True, False, True, "hypothetical CUDA QLoRA")


def _check_settings(parameters: dict[str, Any]) -> Check:
    """Every parameter group against its schema (settings_schema): unknown keys, wrong types, bad values."""
    unchecked: list[str] = []
    problems = parameter_problems(parameters, unchecked=unchecked.append)
    if problems:
        return Check("settings", FAIL, "; ".join(message for _, message in problems if message))
    groups = ", ".join(sorted(group for group in parameters if group not in unchecked))
    if unchecked:
        return Check("settings", WARN, f"valid: {groups}; no schema checks the keys of {', '.join(unchecked)}")
    return Check("settings", PASS, f"every setting known and valid ({groups})")


def run_checks(data: dict[str, Any], model: dict[str, Any], registry: dict[str, Any], training: dict[str, Any],
               preflight: dict[str, Any], parameters: dict[str, Any] | None = None) -> pd.DataFrame:
    """The verdict table: one row per check (check, status, detail).

    The settings come first (``parameters``: every group; by default the five given): when one is wrong,
    nothing is loaded or read, and the checks that would need it say they were skipped.
    """
    settings_check = _check_settings(parameters if parameters is not None else {
        "data": data, "model": model, "model_registry": registry, "training": training, "preflight": preflight})
    if settings_check.status == FAIL:
        skipped = "skipped: the settings are wrong (nothing was loaded)"
        loaded = [Check(name, SKIP, skipped) for name in ("model resolvable", "tokenizer and template", "dataset",
                                                           "memory")]
    else:
        loaded = _model_data_and_memory_checks(data, model, registry, training, preflight)
    folders = list(preflight.get("output_dirs") or [])
    need_disk = 0.05 * GIB  # adapter, predictions, plots and MLflow copies of a LoRA run
    converted = any(check.name == "model resolvable" and check.status == PASS for check in loaded)
    if not converted and settings_check.status != FAIL and ModelEntry.from_registry(model["name"], registry).embedded:
        need_disk += 0.6 * GIB  # the one-time conversion of the embedded model
    min_free_gb = float(preflight.get("min_free_disk_gb", 1))
    checks = [settings_check, *loaded[:-1], _check_writable(folders),
              _guard("free disk", lambda: _check_disk(folders, need_disk, min_free_gb)), loaded[-1]]
    # The table is printed and saved: a detail quoting a setting (a data path with user:password@) is masked.
    rows = [{**c.__dict__, "detail": redact(c.detail)} for c in checks]
    return pd.DataFrame(rows, columns=["name", "status", "detail"])


def _model_data_and_memory_checks(data: dict[str, Any], model: dict[str, Any], registry: dict[str, Any],
                                  training: dict[str, Any], preflight: dict[str, Any]) -> list[Check]:
    """Model, template, data and memory: the checks that load a tokenizer and read the data."""
    checks: list[Check] = []
    labels = declared_labels(data)  # None: a multi-class task takes its labels from the data
    entry = _guard_entry(model["name"], registry, checks)
    model_check, session = _check_model("model resolvable", model, registry, str(training.get("precision", "auto")))
    resolved = session.resolved if session is not None else None
    checks.append(model_check)
    records = training_records(data)
    if session is not None:
        checks.append(_guard("tokenizer and template",
                             lambda: _check_template(session, labels or _labels_in_data(data, records),
                                                     open_task=task_type(data) in OPEN_TASKS)))
    else:
        checks.append(Check("tokenizer and template", SKIP, "skipped: the model was not found"))
    checks.append(_guard("dataset", lambda: _check_data(data, labels)))
    settings = TrainingSettings.from_params(training)
    margin = float(preflight.get("memory_margin", 1.2))

    def memory() -> Check:
        longest = longest_row_tokens(session, records) if session is not None and records is not None else None
        return _check_memory(entry, resolved, model, settings, margin, longest)

    checks.append(_guard("memory", memory))
    return checks


def _guard_entry(name: str, registry: dict[str, Any], checks: list[Check]) -> ModelEntry | None:
    try:
        return ModelEntry.from_registry(name, registry)
    except ValueError as error:
        checks.append(Check("model registry", FAIL, str(error)))
        return None


def format_verdict(table: pd.DataFrame) -> str:
    """The verdict table as the console shows it, with the overall verdict last."""
    width = max(len(name) for name in table["name"])
    lines = [f"{row.status:<4}  {row.name:<{width}}  {row.detail}" for row in table.itertuples(index=False)]
    failed = int((table["status"] == FAIL).sum())
    verdict = f"preflight FAILED: {failed} check(s) failed" if failed else "preflight passed"
    return "\n".join(["", "Preflight verdict", *lines, verdict, ""])
