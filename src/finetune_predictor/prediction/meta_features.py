"""Meta-features of a candidate fine-tune (dataset, hyperparameters, base model), computed cheaply
before (and without) the full run. They are the predictor's columns; every name starts with ``mf_``.

Groups:
- config and size: examples, learning rate, LoRA shape, effective batch, epochs, planned tokens, model size;
- static text: token lengths, type-token ratio, output n-gram repetition, duplicates, label balance,
  special characters;
- representation (the base model's own mean-pooled hidden states, no extra download): output semantic
  diversity (``mf_out_semdiv``, a NovelSum-style proximity-weighted novelty), input-output similarity
  (``mf_io_sim``), embedding outlier ratio;
- model-based: the base model's initial answer loss and its perplexity on the inputs;
- dynamic probes: K LoRA steps with the candidate's hyperparameters on a sample, through the same
  ``train_lora`` as the real run: loss decay rate and stability, gradient-norm mean and spread, and the
  consistency (cosine) of LoRA gradients between consecutive mini-batches.

Results are cached by (dataset hash, model, hyperparameters, probe config).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics.pairwise import cosine_similarity
from transformers import TrainerCallback

from finetune_predictor.data.records import content_sha256
from finetune_predictor.data.splits import deduplicate
from finetune_predictor.modeling.artifacts import atomic_write_text
from finetune_predictor.modeling.batching import (
    IGNORE_INDEX,
    LeftPadCollator,
    attention_mask_of,
    left_pad,
    position_ids_of,
)
from finetune_predictor.modeling.hardware import release_accelerator_memory
from finetune_predictor.modeling.model_session import ModelSession
from finetune_predictor.modeling.training import build_training_rows, train_lora
from finetune_predictor.settings_schema import UNKEYED_TRAINING_SETTINGS, TrainingSettings
from finetune_predictor.tasks import TASK_TYPES, Task


@dataclass(frozen=True)
class ProbeSettings:
    """How much the features may cost: a sample for the representation and loss features, K probe steps."""

    sample_size: int = 64
    probe_steps: int = 20
    probe_batch_size: int | None = None  # None: the candidate's own batch size
    knn: int = 10
    seed: int = 0
    cache: bool = True

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None) -> ProbeSettings:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__) - {"cache_dir"})
        if unknown:
            raise ValueError(f"Unknown meta_features setting(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        values.pop("cache_dir", None)
        return cls(**values)


# --- static descriptors (pure functions; tests check them by hand) --------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def moving_average_ttr(texts: Sequence[str], window: int = 50) -> float:
    """Type-token ratio averaged over sliding windows of ``window`` words (independent of corpus size)."""
    tokens = [w for text in texts for w in words(text)]
    if not tokens:
        return 0.0
    if len(tokens) <= window:
        return len(set(tokens)) / len(tokens)
    counts = Counter(tokens[:window])
    ratios = [len(counts) / window]
    for start in range(1, len(tokens) - window + 1):
        leaving, entering = tokens[start - 1], tokens[start + window - 1]
        counts[leaving] -= 1
        if counts[leaving] == 0:
            del counts[leaving]
        counts[entering] += 1
        ratios.append(len(counts) / window)
    return float(np.mean(ratios))


def ngram_repetition(texts: Sequence[str], n: int = 2) -> float:
    """Share of word n-grams (over all texts) that repeat an earlier one: 0 = all distinct."""
    grams = [tuple(ws[i:i + n]) for text in texts for ws in [words(text)] for i in range(len(ws) - n + 1)]
    if not grams:
        # Single-word outputs (labels): unigram repetition instead.
        grams = [tuple(words(text)) for text in texts if words(text)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def special_char_ratio(texts: Sequence[str]) -> float:
    chars = "".join(texts)
    if not chars:
        return 0.0
    return sum(1 for ch in chars if not (ch.isalnum() or ch.isspace())) / len(chars)


def novelty_sum(embeddings: np.ndarray, knn: int = 10, proximity_power: float = 1.0) -> float:
    """NovelSum-style semantic diversity of a set: mean over samples of a proximity-weighted distance to
    the others (the nearest neighbour weighs most: weight 1/rank**power over the ``knn`` nearest),
    with cosine distance. Duplicates add no novelty; spread-out sets score high."""
    n = len(embeddings)
    if n < 2:
        return 0.0
    # Clipped at 0: identical texts (a binary task's two answers) give cosine 1 + rounding error.
    distance = np.clip(1.0 - cosine_similarity(embeddings), 0.0, None)
    np.fill_diagonal(distance, np.inf)
    k = min(knn, n - 1)
    nearest = np.sort(distance, axis=1)[:, :k]
    weights = 1.0 / np.arange(1, k + 1) ** proximity_power
    return float(np.mean((nearest * weights).sum(axis=1) / weights.sum()))


def outlier_ratio(embeddings: np.ndarray, z: float = 3.0) -> float:
    """Share of samples whose distance to the centroid is more than ``z`` standard deviations above the mean."""
    if len(embeddings) < 3:
        return 0.0
    distance = np.linalg.norm(embeddings - embeddings.mean(axis=0), axis=1)
    spread = distance.std()
    return float(np.mean(distance > distance.mean() + z * spread)) if spread > 0 else 0.0


def loss_decay_rate(losses: Sequence[float]) -> float:
    """Slope of log(loss) per step (negative = decaying), by least squares."""
    values = np.log(np.clip(np.asarray(losses, dtype=float), 1e-8, None))
    if len(values) < 2:
        return float("nan")  # no slope to measure: missing, not flat
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


def loss_stability(losses: Sequence[float]) -> float:
    """Standard deviation of the residuals of log(loss) around its linear trend (0 = smooth)."""
    values = np.log(np.clip(np.asarray(losses, dtype=float), 1e-8, None))
    if len(values) < 3:
        return float("nan")  # a line through two points has no residual to measure
    steps = np.arange(len(values))
    trend = np.polyval(np.polyfit(steps, values, 1), steps)
    return float(np.std(values - trend))


# --- the base model as a feature extractor -------------------------------------------------------------------


def _sample(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    if len(frame) <= size:
        return frame.reset_index(drop=True)
    return frame.sample(n=size, random_state=seed).reset_index(drop=True)


@torch.no_grad()
def mean_pooled_embeddings(model: Any, token_ids: Sequence[Sequence[int]], pad_id: int,
                           batch_size: int = 16) -> np.ndarray:
    """Mean of the last hidden layer over each sequence's real tokens."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(token_ids), batch_size):
        chunk = [list(ids) or [pad_id] for ids in token_ids[start:start + batch_size]]
        ids, mask = left_pad(chunk, pad_id).to(device), attention_mask_of(chunk).to(device)
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_of(mask),
                       output_hidden_states=True).hidden_states[-1].float()
        summed = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        out.append(summed.cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def answer_and_prompt_loss(model: Any, rows: Sequence[Mapping[str, list[int]]], pad_id: int,
                           batch_size: int = 8) -> tuple[float, float]:
    """Mean NLL per answer token (the initial loss) and per prompt token (log perplexity of the inputs)."""
    collator = LeftPadCollator(pad_id)
    device = next(model.parameters()).device
    answer_nll = answer_count = prompt_nll = prompt_count = 0.0
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collator(rows[start:start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        real = batch["attention_mask"][:, 1:].bool()
        answer = batch["labels"][:, 1:] != IGNORE_INDEX
        prompt = real & ~answer
        answer_nll += float(nll[answer].sum())
        answer_count += float(answer.sum())
        prompt_nll += float(nll[prompt].sum())
        prompt_count += float(prompt.sum())
    return answer_nll / max(answer_count, 1.0), prompt_nll / max(prompt_count, 1.0)


class GradientProbe(TrainerCallback):
    """Records the LoRA gradient of every step (after clipping) to measure batch-to-batch consistency."""

    def __init__(self) -> None:
        self.cosines: list[float] = []
        self._previous: torch.Tensor | None = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            return
        grads = [p.grad.detach().float().flatten() for n, p in model.named_parameters()
                 if p.requires_grad and p.grad is not None and "lora_" in n]
        if not grads:
            return
        current = torch.cat(grads)
        if self._previous is not None:
            self.cosines.append(float(torch.nn.functional.cosine_similarity(current, self._previous, dim=0)))
        self._previous = current


# --- all features of a candidate -------------------------------------------------------------------------


def cache_key(train: pd.DataFrame, session: ModelSession, training: Mapping[str, Any], probe: ProbeSettings) -> str:
    record = session.record()
    keyed = {key: value for key, value in training.items() if key not in UNKEYED_TRAINING_SETTINGS}
    payload = json.dumps({"data": content_sha256(train), "model": session.resolved.name,
                          "max_length": session.formatter.max_length, "precision": record["precision"],
                          "quantization": record["quantization_actual"], "training": keyed,
                          "probe": asdict(probe)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def compute_meta_features(train: pd.DataFrame, session: ModelSession, task: Task, training: Mapping[str, Any],
                          probe: ProbeSettings, cache_dir: Path | None = None) -> dict[str, float]:
    """Every ``mf_*`` feature of (train, hyperparameters, model), from the cache when it has them.

    A feature that could not be measured (too few probe losses, say) is NaN, and ``mf_features_missing``
    counts them: a NaN is never passed off as a measured 0."""
    key = cache_key(train, session, training, probe)
    cache_file = cache_dir / f"{key}.json" if cache_dir is not None and probe.cache else None
    if cache_file is not None and cache_file.is_file():
        # Task features are cheap and the cache is shared by tasks over the same records: always recomputed.
        return {**json.loads(cache_file.read_text()), **task_features(task, train.to_dict("records"))}
    started = time.perf_counter()
    settings = TrainingSettings.from_params(dict(training))
    records = train.to_dict("records")
    rows = build_training_rows(session.formatter, records, [task.target(r) for r in records])
    features = static_features(train, task, rows, settings)
    sample = _sample(train, probe.sample_size, probe.seed).to_dict("records")
    sample_rows = build_training_rows(session.formatter, sample, [task.target(r) for r in sample])
    features.update(model_features(session, task, sample, sample_rows, probe.knn))
    features.update(probe_features(session, sample_rows, settings, probe))
    not_applicable = _not_applicable(task)
    features["mf_features_missing"] = float(sum(1 for key, value in features.items()
                                                if key not in not_applicable and not math.isfinite(value)))
    features["mf_feature_seconds"] = time.perf_counter() - started
    if cache_file is not None:
        atomic_write_text(cache_file, json.dumps(features, indent=1, sort_keys=True))  # never a half-written cache
    return features


def static_features(train: pd.DataFrame, task: Task, rows: list[dict[str, list[int]]],
                    settings: TrainingSettings) -> dict[str, float]:
    """Configuration, size and text statistics: no model forward pass."""
    records = train.to_dict("records")
    targets = [task.target(r) for r in records]
    prompt_lengths = np.array([sum(1 for label in row["labels"] if label == IGNORE_INDEX) for row in rows],
                              dtype=float)
    answer_lengths = np.array([len(row["labels"]) - p for row, p in zip(rows, prompt_lengths, strict=True)])
    inputs = [f"{r['instruction']} {r.get('input') or ''}".strip() for r in records]
    _, duplicates = deduplicate(train, "keep")
    return {
        "mf_size": float(len(train)),
        "mf_learning_rate": settings.learning_rate,
        "mf_log10_learning_rate": math.log10(settings.learning_rate),
        "mf_lora_r": float(settings.lora.r),
        "mf_lora_alpha": float(settings.lora.alpha),
        "mf_lora_dropout": settings.lora.dropout,
        "mf_effective_batch": float(settings.effective_batch_size),
        "mf_epochs": float(settings.num_train_epochs),
        "mf_planned_steps": float(_planned_steps(settings, len(rows))),
        "mf_planned_train_tokens": float(sum(len(r["input_ids"]) for r in rows) * settings.num_train_epochs),
        "mf_input_tokens_mean": float(prompt_lengths.mean()),
        "mf_input_tokens_std": float(prompt_lengths.std()),
        "mf_output_tokens_mean": float(answer_lengths.mean()),
        "mf_output_tokens_std": float(answer_lengths.std()),
        "mf_type_token_ratio": moving_average_ttr(inputs),
        "mf_output_ngram_repetition": ngram_repetition(targets),
        "mf_exact_dup_rate": duplicates["exact_duplicates"] / len(train),
        "mf_near_dup_rate": duplicates["near_duplicates"] / len(train),
        "mf_conflicting_label_rate": duplicates["conflicting_labels"] / len(train),
        "mf_special_char_ratio": special_char_ratio(inputs),
        **task_features(task, records),
    }


def task_features(task: Task, records: list[dict[str, Any]]) -> dict[str, float]:
    """One ``mf_task_<type>`` indicator per task type (so one predictor can learn across tasks), and every
    task type's own features: measured for this run's task, NaN for the others (a label balance means
    nothing for QA), so that every run has the same columns."""
    features: dict[str, float] = {}
    for name, task_class in TASK_TYPES.items():
        features[f"mf_task_{name}"] = float(name == task.name)
        features.update(dict.fromkeys(task_class.feature_names, float("nan")))
    features.update(task.features(records))
    return features


def _not_applicable(task: Task) -> set[str]:
    """Other task types' features: NaN by design, never counted as missing measurements."""
    own = set(type(task).feature_names)
    return {key for task_class in TASK_TYPES.values() for key in task_class.feature_names} - own


def model_features(session: ModelSession, task: Task, sample: list[dict[str, Any]],
                   sample_rows: list[dict[str, list[int]]], knn: int) -> dict[str, float]:
    """The base model as a feature extractor on the sample: diversity, input-output similarity, losses."""
    formatter, pad_id = session.formatter, session.tokenizer.pad_token_id
    base = session.load_model()
    base.eval()
    prompt_ids = [formatter.prompt_ids(str(r["instruction"]), str(r.get("input") or "")) for r in sample]
    answer_ids = [formatter.answer_ids(task.target(r)) for r in sample]
    input_embeddings = mean_pooled_embeddings(base, prompt_ids, pad_id)
    output_embeddings = mean_pooled_embeddings(base, answer_ids, pad_id)
    answer_loss, prompt_loss = answer_and_prompt_loss(base, sample_rows, pad_id)
    params_b = session.entry.params_b if session.entry is not None and session.entry.params_b else None
    features = {
        "mf_out_semdiv": novelty_sum(output_embeddings, knn),
        "mf_in_semdiv": novelty_sum(input_embeddings, knn),
        "mf_io_sim": float(np.mean(np.diag(cosine_similarity(input_embeddings, output_embeddings)))),
        "mf_embedding_outlier_ratio": outlier_ratio(input_embeddings),
        "mf_initial_loss": answer_loss,
        "mf_input_perplexity": math.exp(min(prompt_loss, 50.0)),
        "mf_model_params_b": float(params_b if params_b else sum(p.numel() for p in base.parameters()) / 1e9),
    }
    del base
    release_accelerator_memory()
    return features


def _planned_steps(settings: TrainingSettings, rows: int) -> int:
    if settings.max_steps > 0:
        return settings.max_steps
    per_epoch = math.ceil(rows / settings.effective_batch_size)
    return math.ceil(per_epoch * settings.num_train_epochs)


def probe_features(session: ModelSession, rows: list[dict[str, list[int]]], settings: TrainingSettings,
                   probe: ProbeSettings) -> dict[str, float]:
    """K LoRA steps with the candidate's hyperparameters on the sample, through the real training code and
    the candidate's own model session (precision and quantization included)."""
    values = asdict(settings)
    values.update({"max_steps": probe.probe_steps, "warmup_ratio": 0.0, "logging_steps": 1,
                   "per_device_train_batch_size": probe.probe_batch_size or settings.per_device_train_batch_size,
                   "lr_scheduler_type": "constant", "seed": settings.seed})
    gradients = GradientProbe()
    with tempfile.TemporaryDirectory(prefix="probe-") as workdir:
        result = train_lora(session, rows, TrainingSettings.from_params(values), Path(workdir),
                            callbacks=[gradients], verify=False)
    losses = [h["loss"] for h in result.loss_history]
    grad_norms = [h["grad_norm"] for h in result.loss_history if math.isfinite(h["grad_norm"])]
    nan = float("nan")
    return {
        "mf_probe_steps": float(len(losses)),
        "mf_probe_first_loss": float(losses[0]) if losses else nan,
        "mf_probe_last_loss": float(np.mean(losses[-3:])) if losses else nan,
        "mf_loss_decay_rate": loss_decay_rate(losses),
        "mf_loss_drop_ratio": (float(1 - np.mean(losses[-3:]) / losses[0])
                               if len(losses) >= 2 and losses[0] > 0 else nan),
        "mf_loss_stability": loss_stability(losses),
        "mf_grad_norm_mean": float(np.mean(grad_norms)) if grad_norms else nan,
        "mf_grad_norm_std": float(np.std(grad_norms)) if grad_norms else nan,
        "mf_grad_consistency": float(np.mean(gradients.cosines)) if gradients.cosines else nan,
        "mf_probe_seconds": result.train_runtime_s,
    }
