"""LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer on answer-only loss.

:func:`fine_tune` is the one path of a configuration's fine-tune: training rows, :func:`train_lora` (retried down
the out-of-memory ladder by :func:`train_with_oom_fallback`), the adapter saved and checked. The trainer itself
(LoRA config, answer-window loss, arguments, callbacks) is built in ``sft_trainer.py``.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from finetune_predictor.modeling import checkpoints, memory_fallback
from finetune_predictor.modeling.artifacts import MANIFEST_NAME, atomic_directory, write_manifest
from finetune_predictor.modeling.batching import IGNORE_INDEX
from finetune_predictor.modeling.chat_format import PromptFormatter
from finetune_predictor.modeling.hardware import ComputePlan, release_accelerator_memory
from finetune_predictor.modeling.model_session import ModelSession
from finetune_predictor.modeling.models import sha256_file
from finetune_predictor.modeling.sft_trainer import build_trainer
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import Task

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# What an adapter folder hands on (the catalog's adapter, the MLflow artifact): its files and their sha256.
SAVED_ADAPTER_FILES = (*ADAPTER_FILES, MANIFEST_NAME)


class AdapterNotTrainedError(RuntimeError):
    """The saved adapter is missing files or its LoRA B matrices are all zero."""


@dataclass
class TrainingResult:
    adapter_dir: Path
    loss_history: list[dict[str, float]]
    train_runtime_s: float
    peak_memory_mb: float
    adapter_sha256: dict[str, str]
    num_examples: int
    num_steps: int
    supervised_tokens: int
    eval_loss_history: list[dict[str, float]] = field(default_factory=list)
    resume: checkpoints.Resume = field(default_factory=checkpoints.Resume)  # the checkpoint it resumed from


def build_training_rows(formatter: PromptFormatter, records: Sequence[dict[str, Any]],
                        targets: Sequence[str]) -> list[dict[str, list[int]]]:
    """Tokenised rows (input_ids, labels) with the loss on the answer and end-of-turn token only."""
    return [
        formatter.training_example(str(record["instruction"]), str(record.get("input") or ""), target)
        for record, target in zip(records, targets, strict=True)
    ]


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _peak_memory_mb(plan: ComputePlan) -> float:
    if plan.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def verify_adapter(model: Any, adapter_dir: Path) -> dict[str, str]:
    """Fail the run unless the adapter files exist and at least one LoRA B matrix moved off zero.

    LoRA initialises B to zero, so all-zero B matrices mean the adapter is the identity: training did
    not happen (no steps, zero learning rate, or the loss never reached the answer tokens).
    """
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise AdapterNotTrainedError(f"Adapter folder {adapter_dir} lacks {missing}")
    b_norms = [param.detach().float().abs().max().item()
               for name, param in model.named_parameters() if "lora_B" in name]
    if not b_norms:
        raise AdapterNotTrainedError("The trained model has no LoRA B matrices: was the adapter attached?")
    if max(b_norms) == 0.0:
        raise AdapterNotTrainedError("All LoRA B matrices are zero after training: the adapter learned nothing.")
    return {name: sha256_file(adapter_dir / name) for name in ADAPTER_FILES}


class StepTimer(TrainerCallback):
    """Wall time of every optimiser step (benchmarks take the median after a warm-up)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.durations.append(time.perf_counter() - self._started)


def shareable_base_name(session: ModelSession) -> str:
    """The base model as another machine can name it: the registry's HF id, else the name the run was given
    (a registry name, an HF id, or a local path the user typed), never this machine's converted or cached copy."""
    entry = session.entry
    return entry.hf_id if entry is not None and entry.hf_id else session.resolved.name


def record_base_model(adapter_dir: Path, base_name: str) -> None:
    """PEFT writes the folder the base was loaded from into ``adapter_config.json`` (and its model card): here
    a cache path on the training machine. Replace it with ``base_name``, so a shared adapter loads elsewhere
    onto the base it names (PEFT's ``AutoPeftModelForCausalLM`` reads this field). This project
    loads its adapters onto the base its own session resolves, so the field is provenance here."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    local = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = base_name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = adapter_dir / "README.md"
    if local and local != base_name and card.is_file():
        card.write_text(card.read_text().replace(str(local), base_name))


def train_lora(
    session: ModelSession,
    rows: list[dict[str, list[int]]],
    settings: TrainingSettings,
    output_dir: Path,
    callbacks: Sequence[TrainerCallback] = (),
    verify: bool = True,
    eval_rows: list[dict[str, list[int]]] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainingResult:
    """Fine-tune a LoRA adapter on pre-tokenised rows and save it to ``output_dir``.

    ``callbacks`` are extra Trainer callbacks (probes read loss and gradient norms through them).
    ``verify=False`` (probes) skips saving and checking the adapter. ``eval_rows`` (held-out, tokenised the
    same way) give the held-out loss every ``training.eval_steps`` and after the last step; evaluating never
    changes what is trained. (No evaluation before the first step: with LoRA B at zero that is the base
    model's loss, the same for every configuration of a sweep.) With ``checkpoint_dir`` (kept by the caller
    for this configuration), checkpoints every ``training.checkpoint_steps`` and resumes from the newest
    complete one of the same training (checkpoints.py).
    """
    if not rows:
        raise ValueError("No training examples")
    seed_everything(settings.seed)
    if session.plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the peak of this run, not of the process
    evaluate = bool(eval_rows) and settings.eval_steps > 0
    folder = _checkpoint_folder(session, rows, settings, eval_rows if evaluate else None, checkpoint_dir)
    try:
        trainer = build_trainer(session, rows, settings, output_dir, eval_rows if evaluate else None,
                                folder.folder if folder else None)
    except BaseException:
        # An out-of-memory error loading the model is the ladder's usual case: its next rung must find the
        # folder free (checkpoints.train releases it once training has started).
        if folder is not None:
            folder.release()
        raise
    for callback in callbacks:
        trainer.add_callback(callback)
    started = time.perf_counter()
    resume = checkpoints.train(trainer, folder)  # trainer.train(), from the last checkpoint when there is one
    runtime = time.perf_counter() - started + resume.elapsed_s  # the steps kept from before count too
    adapter_dir = output_dir / "adapter"
    checksums: dict[str, str] = {}
    if verify:
        checksums = save_adapter(trainer.model, session, adapter_dir)
    result = TrainingResult(
        adapter_dir=adapter_dir,
        loss_history=_loss_history(trainer.state.log_history),
        train_runtime_s=runtime,
        peak_memory_mb=_peak_memory_mb(session.plan),
        adapter_sha256=checksums,
        num_examples=len(rows),
        num_steps=int(trainer.state.global_step),
        supervised_tokens=sum(sum(1 for label in row["labels"] if label != IGNORE_INDEX) for row in rows),
        eval_loss_history=_eval_history(trainer.state.log_history),
        resume=resume,
    )
    del trainer
    release_accelerator_memory()
    return result


def save_adapter(model: Any, session: ModelSession, adapter_dir: Path) -> dict[str, str]:
    """Save the trained adapter to ``adapter_dir`` with its ``manifest.json`` (the sha256 of its files, the base
    it names and the precision and quantization it was trained with), and return the checksums.

    The folder is written under a hidden name beside ``adapter_dir`` and renamed when it is complete and
    checked, so a kill during the save, or an adapter that learned nothing, never leaves a folder there."""
    base_name = shareable_base_name(session)
    record = session.record()
    with atomic_directory(adapter_dir) as staging:
        model.save_pretrained(staging)
        record_base_model(staging, base_name)
        checksums = verify_adapter(model, staging)
        write_manifest(staging, checksums, base_model=base_name, precision=record["precision"],
                       quantization=record["quantization_actual"])
    return checksums


def train_with_oom_fallback(
    session: ModelSession,
    rows: list[dict[str, list[int]]],
    settings: TrainingSettings,
    output_dir: Path,
    callbacks: Sequence[TrainerCallback] = (),
    eval_rows: list[dict[str, list[int]]] | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[TrainingResult, memory_fallback.Attempt, int]:
    """:func:`train_lora`, retried down ``training.oom_fallback`` when it runs out of accelerator memory
    (``memory_fallback``). Returns the result, the attempt that finished (its settings and session are what the
    run trained with) and the number of retries. Each retry builds its trainer on the session's base model
    again, with fresh LoRA weights and the same seed, after the last attempt's memory was released; when
    every rung runs out of memory, one :class:`~finetune_predictor.modeling.memory_fallback.OutOfMemoryFallbackError`
    names what was tried and what to set."""
    attempt = memory_fallback.Attempt(settings, session)
    rungs, tried, skipped = iter(settings.oom_fallback), [], []
    while True:
        try:
            result = train_lora(attempt.session, rows, attempt.settings, output_dir, callbacks=callbacks,
                                eval_rows=eval_rows, checkpoint_dir=checkpoint_dir)
            return result, attempt, len(tried)
        except torch.OutOfMemoryError as error:
            tried.append(attempt)
            following = memory_fallback.next_attempt(attempt, rungs, skipped)
            if following is None:
                raise memory_fallback.exhausted_error(tried, skipped, error) from error
            logger.warning("Out of accelerator memory with %s; retrying with %s (%s)", attempt.describe(),
                           following.describe(), following.fallbacks[-1])
        # Outside the except block: the failed attempt's traceback, which holds its model, is gone.
        attempt = following
        release_accelerator_memory()


def _checkpoint_folder(session: ModelSession, rows: list[dict[str, list[int]]], settings: TrainingSettings,
                       eval_rows: list[dict[str, list[int]]] | None,
                       checkpoint_dir: Path | None) -> checkpoints.CheckpointFolder | None:
    """The caller's checkpoint folder, locked for this training and keyed by what it trains; None when the
    caller keeps none (probes, benchmarks), ``training.checkpoint_steps`` is 0, or another process holds it."""
    if checkpoint_dir is None or settings.checkpoint_steps == 0:
        return None
    return checkpoints.open_folder(checkpoint_dir, checkpoints.fingerprint(session, rows, settings, eval_rows))


def _eval_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The held-out loss by step, once per step (the end-of-training evaluation may repeat the last one)."""
    by_step = {int(entry["step"]): float(entry["eval_loss"]) for entry in log_history if "eval_loss" in entry}
    return [{"step": float(step), "loss": loss} for step, loss in sorted(by_step.items())]


def _loss_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [
        {"step": float(entry["step"]), "loss": float(entry["loss"]),
         "grad_norm": float(entry.get("grad_norm", float("nan"))),
         "learning_rate": float(entry.get("learning_rate", float("nan")))}
        for entry in log_history if "loss" in entry
    ]


def fine_tune(train: Any, session: ModelSession, task: Task, training: dict[str, Any], workdir: Path,
              callbacks: Sequence[TrainerCallback] = (), held_out: Any = None,
              held_out_split: str = "validation", checkpoint_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The whole fine-tune of one configuration: the one path used by the sft_training pipeline, the
    sensitivity sweep and the probes. Returns the adapter folder (inside ``workdir``) and the training
    summary (loss history, checksums, cost, and the settings the session actually ran with).

    ``held_out`` (records never trained on; at most ``training.eval_max_records`` of them, and never more
    than the training records, so a small configuration's curve stays cheap) gives the held-out loss curve,
    logged as ``<held_out_split>_loss``. ``checkpoint_dir``: where this configuration's checkpoints are kept
    (the summary's ``resumed_from_step`` and ``superseded_run_ids`` say what a resumed fine-tune took over)."""
    settings = TrainingSettings.from_params(training)
    records = train.to_dict("records")
    truncated_before = session.formatter.truncated_prompts
    rows = build_training_rows(session.formatter, records, [task.target(record) for record in records])
    truncated = session.formatter.truncated_prompts - truncated_before
    if truncated:
        logger.warning("%d of %d training records were longer than model.max_length=%d: their input was "
                       "shortened (never the answer)", truncated, len(records), session.formatter.max_length)
    # The same slice for every seed and configuration (a test set may be ordered by label: sampled, not its head).
    eval_records = [] if held_out is None or not len(held_out) else held_out.sample(
        n=min(settings.eval_max_records, len(held_out), len(records)), random_state=0).to_dict("records")
    eval_rows = build_training_rows(session.formatter, eval_records, [task.target(r) for r in eval_records])
    result, ran, retries = train_with_oom_fallback(session, rows, settings, workdir, callbacks=callbacks,
                                                   eval_rows=eval_rows, checkpoint_dir=checkpoint_dir)
    summary = {
        "model_name": session.resolved.name,
        **ran.session.record(),  # the session trained on: 4-bit after the 4bit rung
        **ran.record(retries),
        "train_runtime_s": result.train_runtime_s,
        "peak_memory_mb": result.peak_memory_mb,
        "num_examples": result.num_examples,
        "records_truncated": truncated,
        "num_steps": result.num_steps,
        "supervised_tokens": result.supervised_tokens,
        "adapter_sha256": result.adapter_sha256,
        "loss_history": result.loss_history,
        "eval_loss_history": result.eval_loss_history,
        "eval_split": held_out_split,
        "eval_records": len(eval_rows) if result.eval_loss_history else 0,
        "effective_batch_size": settings.effective_batch_size,
        "lora_target_modules": session.lora_target_modules(settings.lora.target_modules),
        "resumed_from_step": result.resume.step,
        "superseded_run_ids": list(result.resume.run_ids),
    }
    return result.adapter_dir, summary
