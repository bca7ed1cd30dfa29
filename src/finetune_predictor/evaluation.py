"""Prediction tables and metrics for a base model with or without a LoRA adapter."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from finetune_predictor.hardware import choose_compute_plan, release_accelerator_memory
from finetune_predictor.models import load_causal_lm, load_formatter, resolve_model
from finetune_predictor.scoring import (
    candidate_probabilities,
    generate_answers,
    generate_answers_vllm,
    score_candidates,
    vllm_available,
)
from finetune_predictor.tasks import Task

logger = logging.getLogger(__name__)

ENGINES = ("auto", "hf", "vllm")


def _column_key(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label.lower())


def predict(
    test: pd.DataFrame,
    task: Task,
    model_params: dict[str, Any],
    evaluation_params: dict[str, Any],
    adapter_dir: str | None = None,
    registry: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per test record: label scores, the scored prediction, the generated text and its parse.

    Label scoring (one batched forward pass) is the primary prediction; greedy generation through the
    strict parser is the second view. ``adapter_dir=None`` evaluates the base model.
    """
    engine = evaluation_params.get("engine", "auto")
    if engine not in ENGINES:
        raise ValueError(f"evaluation.engine must be one of {ENGINES}, got {engine!r}")
    plan = choose_compute_plan("auto", "none")
    resolved = resolve_model(model_params["name"], model_params.get("cache_dir"), registry)
    formatter = load_formatter(resolved, model_params)
    model = load_causal_lm(resolved.path, plan, trust_remote_code=resolved.trust_remote_code)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
        model = model.merge_and_unload()  # one matmul per layer instead of base + LoRA at inference
    records = test.to_dict("records")
    batch_size = int(evaluation_params.get("batch_size", 16))
    candidates = task.candidates()
    frame = pd.DataFrame({"id": test["id"].to_numpy(), "reference": [task.target(r) for r in records]})
    if candidates:
        log_probs = score_candidates(model, formatter, records, candidates, batch_size=batch_size)
        probabilities = candidate_probabilities(log_probs)
        for index, label in enumerate(candidates):
            frame[f"logprob_{_column_key(label)}"] = log_probs[:, index]
        frame["prob_positive"] = probabilities[:, 0]
        frame["scored_prediction"] = [candidates[i] for i in log_probs.argmax(axis=1)]
    if evaluation_params.get("generation", True):
        max_new_tokens = int(evaluation_params.get("max_new_tokens", 8))
        use_vllm = engine == "vllm" or (engine == "auto" and vllm_available())
        if use_vllm:
            del model  # vLLM takes the GPU memory for itself
            texts = generate_answers_vllm(resolved.path, formatter, records, adapter_dir, max_new_tokens,
                                          max_lora_rank=_max_lora_rank(resolved, evaluation_params))
        else:
            texts = generate_answers(model, formatter, records, max_new_tokens, batch_size=batch_size)
        frame["generated_text"] = texts
        frame["generated_prediction"] = [task.parse(text) for text in texts]
    model = None
    release_accelerator_memory()
    return frame


def _max_lora_rank(resolved: Any, evaluation_params: dict[str, Any]) -> int:
    """``evaluation.max_lora_rank`` when set, else the registry's value for the model."""
    if evaluation_params.get("max_lora_rank") is not None:
        return int(evaluation_params["max_lora_rank"])
    return resolved.entry.max_lora_rank if resolved.entry is not None else 64


def metrics_of(predictions: pd.DataFrame, task: Task) -> dict[str, Any]:
    """Metrics of the scored view (accuracy, F1, AUC, ...) plus the generation view under ``gen_``."""
    reference = predictions["reference"].tolist()
    result: dict[str, Any] = {}
    if "scored_prediction" in predictions:
        result.update(task.metrics(reference, predictions["scored_prediction"].tolist(),
                                   predictions["prob_positive"].to_numpy()))
    if "generated_prediction" in predictions:
        parsed = [None if (p is None or (isinstance(p, float) and np.isnan(p))) else p
                  for p in predictions["generated_prediction"].tolist()]
        generated = task.metrics(reference, parsed)
        result.update({f"gen_{key}": value for key, value in generated.items()})
        # Parse failures are a property of what the model writes: reported from the generation view.
        result["parse_failures"] = generated["parse_failures"]
        result["parse_failure_rate"] = generated["parse_failure_rate"]
    return result
