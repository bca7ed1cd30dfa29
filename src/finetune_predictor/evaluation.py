"""Prediction tables and metrics for a base model with or without a LoRA adapter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from finetune_predictor.hardware import release_accelerator_memory
from finetune_predictor.model_session import ModelSession
from finetune_predictor.scoring import generate_answers, generate_answers_vllm, score_candidates, vllm_available
from finetune_predictor.tasks import Task

ENGINES = ("auto", "hf", "vllm")


def _column_key(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label.lower())


def generation_engine(requested: str) -> str:
    """The engine that generates: ``auto`` is vLLM when CUDA and vLLM are present, else HF."""
    if requested not in ENGINES:
        raise ValueError(f"evaluation.engine must be one of {ENGINES}, got {requested!r}")
    if requested == "auto":
        return "vllm" if vllm_available() else "hf"
    return requested


def predict(test: pd.DataFrame, task: Task, session: ModelSession, evaluation_params: dict[str, Any],
            adapter_dir: str | None = None) -> pd.DataFrame:
    """One row per test record: label scores, the scored prediction, the generated text and its parse.

    Label scoring (one batched forward pass) is the primary prediction; greedy generation through the
    strict parser is the second view. ``adapter_dir=None`` evaluates the base model. The column
    ``engine`` says which engine generated (hf or vllm).
    """
    engine = generation_engine(str(evaluation_params.get("engine", "auto")))
    model = session.load_model(adapter_dir)
    records = test.to_dict("records")
    batch_size = int(evaluation_params.get("batch_size", 16))
    frame = pd.DataFrame({"id": test["id"].to_numpy(), "reference": [task.target(r) for r in records]})
    candidates = task.candidates()
    if candidates:
        _add_label_scores(frame, task, candidates, score_candidates(model, session.formatter, records, candidates,
                                                                    batch_size=batch_size))
    if evaluation_params.get("generation", True):
        max_new_tokens = int(evaluation_params.get("max_new_tokens", 8))
        if engine == "vllm":
            del model  # vLLM takes the GPU memory for itself
            model = None
            texts = generate_answers_vllm(session.resolved.path, session.formatter, records, adapter_dir,
                                          max_new_tokens, max_lora_rank=_max_lora_rank(session, evaluation_params))
        else:
            texts = generate_answers(model, session.formatter, records, max_new_tokens, batch_size=batch_size)
        frame["generated_text"] = texts
        frame["generated_prediction"] = [task.parse(text) for text in texts]
    frame["engine"] = engine
    model = None
    release_accelerator_memory()
    return frame


def _add_label_scores(frame: pd.DataFrame, task: Task, candidates: list[str], log_probs: np.ndarray) -> None:
    """Log-probability columns per label, the scored prediction, and P(positive label) picked by name."""
    for index, label in enumerate(candidates):
        frame[f"logprob_{_column_key(label)}"] = log_probs[:, index]
    positive = getattr(task, "positive_label", None)
    if positive in candidates:
        frame["prob_positive"] = softmax(log_probs, axis=1)[:, candidates.index(positive)]
    frame["scored_prediction"] = [candidates[i] for i in log_probs.argmax(axis=1)]


def _max_lora_rank(session: ModelSession, evaluation_params: dict[str, Any]) -> int:
    """``evaluation.max_lora_rank`` when set, else the registry's value for the model."""
    if evaluation_params.get("max_lora_rank") is not None:
        return int(evaluation_params["max_lora_rank"])
    return session.entry.max_lora_rank if session.entry is not None else 64


def metrics_of(predictions: pd.DataFrame, task: Task) -> dict[str, Any]:
    """Metrics of the scored view (accuracy, F1, AUC, ...) plus the generation view under ``gen_``."""
    reference = predictions["reference"].tolist()
    result: dict[str, Any] = {}
    if "scored_prediction" in predictions:
        scores = predictions["prob_positive"].to_numpy() if "prob_positive" in predictions else None
        result.update(task.metrics(reference, predictions["scored_prediction"].tolist(), scores))
    if "generated_prediction" in predictions:
        parsed = [None if (p is None or (isinstance(p, float) and np.isnan(p))) else p
                  for p in predictions["generated_prediction"].tolist()]
        generated = task.metrics(reference, parsed)
        result.update({f"gen_{key}": value for key, value in generated.items()})
        # Parse failures are a property of what the model writes: reported from the generation view.
        result["parse_failures"] = generated["parse_failures"]
        result["parse_failure_rate"] = generated["parse_failure_rate"]
    if "engine" in predictions:
        result["engine"] = str(predictions["engine"].iloc[0])
    return result
