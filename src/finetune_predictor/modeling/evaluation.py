"""Prediction tables and metrics for a base model with or without a LoRA adapter."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from finetune_predictor import tracking
from finetune_predictor.data.records import content_sha256, reference_lists
from finetune_predictor.modeling.chat_format import PromptFormatter
from finetune_predictor.modeling.hardware import release_accelerator_memory
from finetune_predictor.modeling.model_session import ModelSession
from finetune_predictor.modeling.models import folder_sha256
from finetune_predictor.modeling.scoring import (
    generate_answers,
    generate_answers_vllm,
    score_candidates,
    vllm_available,
)
from finetune_predictor.tasks import Task
from finetune_predictor.tasks.base import label_key, label_roles

logger = logging.getLogger(__name__)

ENGINES = ("auto", "hf", "vllm")
LABEL_SCORING = ("sum", "mean", "calibrated")
CONTENT_FREE_INPUT = "N/A"


def generation_engine(requested: str) -> str:
    """The engine that generates: ``auto`` is vLLM when CUDA and vLLM are present, else HF."""
    if requested not in ENGINES:
        raise ValueError(f"evaluation.engine must be one of {ENGINES}, got {requested!r}")
    if requested == "auto":
        return "vllm" if vllm_available() else "hf"
    return requested


def max_new_tokens(task: Task, evaluation_params: dict[str, Any], formatter: PromptFormatter) -> int:
    """``evaluation.max_new_tokens``, or the task's own budget when it is null: for a classification task
    the longest label's tokens plus the end-of-turn token (the longest answer training teaches), for a
    SQuAD answer 32, for a JSON record 128 (which stops earlier at the end of the object)."""
    value = evaluation_params.get("max_new_tokens")
    if value is not None:
        return int(value)
    if task.max_new_tokens is not None:
        return int(task.max_new_tokens)
    candidates = task.candidates()
    if not candidates:
        raise ValueError(f"Task {task.name!r} has neither a generation budget nor labels to derive one from")
    # answer_ids is the label as training supervises it: its tokens and the end-of-turn token.
    return max(len(formatter.answer_ids(label)) for label in candidates)


def predict(test: pd.DataFrame, task: Task, session: ModelSession, evaluation_params: dict[str, Any],
            adapter_dir: str | None = None, model: Any | None = None) -> pd.DataFrame:
    """One row per test record: label scores, the scored prediction, the generated text and its parse.

    For a classification task label scoring (one batched forward pass) is the primary prediction and
    greedy generation through the strict parser the second view; an open task (QA, structured) is judged
    on generation alone, which then always runs. ``adapter_dir=None`` evaluates the base model. The column
    ``engine`` says which engine generated (hf or vllm); ``references`` holds every accepted answer where
    the records have several (SQuAD). ``model``: the session's model already loaded (a release times its
    load apart); it is released here as a model this function loads is.
    """
    engine = generation_engine(str(evaluation_params.get("engine", "auto")))
    if adapter_dir is not None:
        session = session.for_adapter(adapter_dir)  # a QLoRA adapter on the 4-bit base it was trained on
    if model is None:
        model = session.load_model(adapter_dir)  # checks the adapter's files against their recorded sha256
    truncated_before = session.formatter.truncated_prompts
    records = test.to_dict("records")
    batch_size = int(evaluation_params.get("batch_size", 16))
    frame = pd.DataFrame({"id": test["id"].to_numpy(), "reference": [task.target(r) for r in records]})
    references = reference_lists(test)
    if references is not None:
        frame["references"] = references
    candidates = task.candidates()
    if candidates:
        rule = str(evaluation_params.get("label_scoring", "sum"))
        log_probs = score_candidates(model, session.formatter, records, candidates, batch_size=batch_size)
        add_label_scores(frame, task, candidates, label_scores(log_probs, rule, model, session, records, candidates))
    # Each record's prompt is built once per view; the first view's count is the number of records cut.
    truncated = session.formatter.truncated_prompts - truncated_before
    if evaluation_params.get("generation", True) or not candidates:
        budget = max_new_tokens(task, evaluation_params, session.formatter)
        if engine == "vllm":
            del model  # vLLM takes the GPU memory for itself
            model = None
            texts = generate_answers_vllm(session.resolved.path, session.formatter, records, adapter_dir,
                                          budget, max_lora_rank=_max_lora_rank(session, evaluation_params),
                                          quantization="bitsandbytes" if session.plan.load_in_4bit else None)
        else:
            texts = generate_answers(model, session.formatter, records, budget, batch_size=batch_size,
                                     stop=getattr(task, "stop", None))
        frame["generated_text"] = texts
        frame["generated_prediction"] = [task.parse(text) for text in texts]
    frame["engine"] = engine
    frame["prompts_truncated"] = truncated if candidates else session.formatter.truncated_prompts - truncated_before
    model = None
    release_accelerator_memory()
    return frame


# --- the baseline: computed once per key, reused by later runs and sweeps --------------------------------

# Raise when the prediction code changes what a baseline contains: every stored baseline then misses.
PREDICTIONS_VERSION = 2


def evaluated_set_sha256(test: pd.DataFrame) -> str:
    """What a prediction table is of: the records' content, their ids and their accepted answers."""
    parts = [content_sha256(test), json.dumps([str(value) for value in test["id"]])]
    if "references" in test:
        parts.append(json.dumps([str(value) for value in test["references"]]))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _installed_versions(*packages: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def baseline_key(test: pd.DataFrame, task: Task, session: ModelSession, evaluation_params: dict[str, Any]) -> str:
    """Everything that changes the base model's predictions: the model's content (weights, config,
    tokenizer), the test set, the task (labels, schema, ...), how prompts are built (template, system
    prompt, max_length), where and how the model runs (device, precision, quantization, engine) and the
    scoring and generation settings. ``batch_size`` is left out: batches give the same predictions
    (length grouping and batch independence are tested)."""
    import torch
    import transformers

    candidates = task.candidates()
    generation = bool(evaluation_params.get("generation", True)) or not candidates
    formatter = session.formatter
    payload = {
        "version": PREDICTIONS_VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
        # 4-bit weights and vLLM's kernels give other predictions from one release to the next.
        "gpu_libraries": _installed_versions("bitsandbytes", "vllm"),
        "model": folder_sha256(session.resolved.path), "test": evaluated_set_sha256(test),
        "task": {"type": type(task).__name__, **asdict(task)},
        "prompt": {"max_length": formatter.max_length, "system_prompt": formatter.system_prompt,
                   "chat_template": formatter.tokenizer.chat_template if formatter.uses_chat_template else None},
        "plan": {"device": session.plan.device, "precision": session.plan.precision_name},
        "label_scoring": str(evaluation_params.get("label_scoring", "sum")) if candidates else None,
        "generation": generation,
        "max_new_tokens": max_new_tokens(task, evaluation_params, formatter) if generation else None,
        "engine": generation_engine(str(evaluation_params.get("engine", "auto"))) if generation else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def baseline_predictions(test: pd.DataFrame, task: Task, session: ModelSession, evaluation_params: dict[str, Any],
                         tracked: bool, run_id: str = "") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The base model's predictions and their provenance (``baseline_key``, ``baseline_reused``,
    ``baseline_source_run_id``, logged with the run record).

    With ``evaluation.reuse_baseline`` and an MLflow store (``tracked``), a FINISHED run with the same key
    gives its predictions instead of computing them again; otherwise they are computed, and ``run_id`` (the
    run that logs them) is their source.
    """
    key = baseline_key(test, task, session, evaluation_params)
    if tracked and evaluation_params.get("reuse_baseline", True):
        previous = tracking.finished_baseline_run(key)
        found = tracking.load_baseline_predictions(previous) if previous is not None else None
        if found is not None and found[0]["id"].astype(str).tolist() == test["id"].astype(str).tolist():
            logger.info("Baseline reused from run %s (baseline_key %s): not computed again", found[1], key)
            return found[0], {tracking.BASELINE_KEY: key, tracking.BASELINE_REUSED: "true",
                              tracking.BASELINE_SOURCE: found[1]}
    frame = predict(test, task, session, evaluation_params)
    return frame, {tracking.BASELINE_KEY: key, tracking.BASELINE_REUSED: "false", tracking.BASELINE_SOURCE: run_id}


def label_scores(log_probs: np.ndarray, rule: str, model: Any, session: ModelSession,
                 records: list[dict[str, Any]], candidates: list[str],
                 scorer: Callable[[list[dict[str, Any]]], np.ndarray] | None = None) -> np.ndarray:
    """Per-label scores under ``evaluation.label_scoring``.

    ``sum``: the summed log-probability of the label's tokens (favours labels with fewer tokens);
    ``mean``: per token; ``calibrated``: minus the log-probability the model gives the label after a
    content-free input ("N/A") with the same instruction (contextual calibration, Zhao et al. 2021),
    which removes the model's prior preference for one label. ``scorer`` scores records' candidates with
    another engine (llama.cpp for a GGUF release); by default :func:`score_candidates` with ``model``.
    """
    if rule not in LABEL_SCORING:
        raise ValueError(f"evaluation.label_scoring must be one of {LABEL_SCORING}, got {rule!r}")
    if rule == "mean":
        lengths = np.array([len(session.formatter.answer_ids(label)) for label in candidates], dtype=float)
        return log_probs / lengths
    if rule == "calibrated":
        instructions = sorted({str(r["instruction"]) for r in records})
        content_free = [{"instruction": text, "input": CONTENT_FREE_INPUT} for text in instructions]
        scored = (scorer(content_free) if scorer is not None
                  else score_candidates(model, session.formatter, content_free, candidates))
        priors = dict(zip(instructions, scored, strict=True))
        return log_probs - np.stack([priors[str(r["instruction"])] for r in records])
    return log_probs


def add_label_scores(frame: pd.DataFrame, task: Task, candidates: list[str], log_probs: np.ndarray) -> None:
    """Log-probability and probability columns per label, the scored prediction, and P(positive label)
    picked by name (never by position)."""
    probabilities = softmax(log_probs, axis=1)
    for index, label in enumerate(candidates):
        frame[f"logprob_{label_key(label)}"] = log_probs[:, index]
        frame[f"prob_{label_key(label)}"] = probabilities[:, index]
    positive = getattr(task, "positive_label", None)
    if positive in candidates:
        frame["prob_positive"] = probabilities[:, candidates.index(positive)]
    frame["scored_prediction"] = [candidates[i] for i in log_probs.argmax(axis=1)]


def _max_lora_rank(session: ModelSession, evaluation_params: dict[str, Any]) -> int:
    """``evaluation.max_lora_rank`` when set, else the registry's value for the model."""
    if evaluation_params.get("max_lora_rank") is not None:
        return int(evaluation_params["max_lora_rank"])
    return session.entry.max_lora_rank if session.entry is not None else 64


def metrics_of(predictions: pd.DataFrame, task: Task) -> dict[str, Any]:
    """Metrics of the scored view (accuracy, F1, AUC, ...) plus the generation view under ``gen_``; an open
    task's metrics are its generation view's, unprefixed (``exact_match``, ``f1``, ``field_accuracy``)."""
    # Text columns stay text: a JSON reader may have turned an answer like "1945" into a number.
    reference = (predictions["references"].tolist() if "references" in predictions
                 else [str(value) for value in predictions["reference"]])
    result: dict[str, Any] = {}
    if "scored_prediction" in predictions:
        labels = task.candidates() or []
        columns = [f"prob_{label_key(label)}" for label in labels]
        if "prob_positive" in predictions:
            scores = predictions["prob_positive"].to_numpy()
        elif columns and all(column in predictions for column in columns):
            scores = predictions[columns].to_numpy()  # one column per label: one-vs-rest AUC
        else:
            scores = None
        result.update(task.metrics(reference, predictions["scored_prediction"].tolist(), scores))
        # A base model that always answers one label scores 50% on a balanced test: the shares show it.
        shares = predictions["scored_prediction"].value_counts(normalize=True)
        result.update({f"predicted_share_{label_key(label)}": float(shares.get(label, 0.0)) for label in labels})
        roles = label_roles(labels, getattr(task, "positive_label", None))  # also by role: predicted_share_positive
        result.update({f"predicted_share_{roles[label]}": float(shares.get(label, 0.0)) for label in labels})
    if "generated_prediction" in predictions:
        parsed = [None if (p is None or (isinstance(p, float) and np.isnan(p))) else str(p)
                  for p in predictions["generated_prediction"].tolist()]
        generated = task.metrics(reference, parsed)
        prefix = "gen_" if task.candidates() else ""
        result.update({f"{prefix}{key}": value for key, value in generated.items()})
        # Parse failures are a property of what the model writes: reported from the generation view.
        result["parse_failures"] = generated["parse_failures"]
        result["parse_failure_rate"] = generated["parse_failure_rate"]
    primary = getattr(task, "primary_metric", "accuracy")
    if primary in result:
        result["primary"] = result[primary]
    if "engine" in predictions:
        result["engine"] = str(predictions["engine"].iloc[0])
    if "prompts_truncated" in predictions:
        result["records_truncated"] = int(predictions["prompts_truncated"].iloc[0])
    return result


def headline(metrics: dict[str, Any], seconds: float | None = None) -> str:
    """One line a person reads first: the primary metric before and after fine-tuning, the gain, AUC where
    the task has one, the cheap baseline, and the wall time."""
    baseline, finetuned = metrics["baseline"], metrics["finetuned"]
    classical = metrics.get("classical") or {}
    name = next((key for key in ("accuracy", "f1", "field_accuracy")
                 if key in finetuned and finetuned.get("primary") == finetuned[key]), "primary").replace("_", " ")
    parts = [f"{name}: baseline {100 * baseline['primary']:.1f}% -> fine-tuned {100 * finetuned['primary']:.1f}% "
             f"({100 * (finetuned['primary'] - baseline['primary']):+.1f} points)"]
    if "auc" in finetuned and "auc" in baseline:
        parts.append(f"AUC {baseline['auc']:.2f} -> {finetuned['auc']:.2f}")
    if "primary" in classical:
        parts.append(f"classical {100 * classical['primary']:.1f}%")
    if seconds is not None:
        parts.append(f"{seconds / 60:.1f} min")
    return ", ".join(parts)
