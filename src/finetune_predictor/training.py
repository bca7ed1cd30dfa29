"""LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer on answer-only loss."""

from __future__ import annotations

import hashlib
import logging
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from finetune_predictor import warning_filters
from finetune_predictor.batching import IGNORE_INDEX, LeftPadCollator, answer_window
from finetune_predictor.chat_format import PromptFormatter
from finetune_predictor.hardware import ComputePlan, release_accelerator_memory
from finetune_predictor.model_session import ModelSession
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import Task

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


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


def build_training_rows(formatter: PromptFormatter, records: Sequence[dict[str, Any]],
                        targets: Sequence[str]) -> list[dict[str, list[int]]]:
    """Tokenised rows (input_ids, labels) with the loss on the answer and end-of-turn token only."""
    return [
        formatter.training_example(str(record["instruction"]), str(record.get("input") or ""), target)
        for record, target in zip(records, targets, strict=True)
    ]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class _LossLogger(TrainerCallback):
    """Progress through the logging module (the Trainer's printer writes raw dicts to stdout)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs and (state.global_step % 10 == 0 or state.global_step == state.max_steps):
            logger.info("step %d/%d loss %.4f", state.global_step, state.max_steps, float(logs["loss"]))


def warmup_steps(settings: TrainingSettings, num_rows: int) -> int:
    """Warm-up steps, rounded down: HF rounds the ratio up, which gives a one-step run a learning rate
    of zero on its only step (and an adapter that learned nothing)."""
    if settings.max_steps > 0:
        total = settings.max_steps
    else:
        per_epoch = math.ceil(num_rows / (settings.per_device_train_batch_size * settings.gradient_accumulation_steps))
        total = math.ceil(per_epoch * settings.num_train_epochs)
    return int(settings.warmup_ratio * total)


@lru_cache(maxsize=1)
def answer_window_trainer_class() -> type:
    """TRL's ``SFTTrainer`` whose loss projects only the trailing answer window onto the vocabulary.

    Batches come left-padded from :class:`LeftPadCollator`, so every answer ends at the last column. The
    loss is the model's own causal-LM loss (normalised by ``num_items_in_batch`` exactly as the HF Trainer
    does), computed from ``logits_to_keep`` trailing columns with the labels cut to the same columns.
    This is the same loss as TRL's full-sequence path (a unit test checks it) at a fraction of the cost
    on CPUs, where TRL's fused head still projects every position.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class AnswerWindowSFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            labels = inputs["labels"]
            keep = answer_window(labels)
            windowed = {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep, "use_cache": False}
            return Trainer.compute_loss(self, model, windowed, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return AnswerWindowSFTTrainer


def train_lora(
    session: ModelSession,
    rows: list[dict[str, list[int]]],
    settings: TrainingSettings,
    output_dir: Path,
    callbacks: Sequence[TrainerCallback] = (),
    verify: bool = True,
) -> TrainingResult:
    """Fine-tune a LoRA adapter on pre-tokenised rows and save it to ``output_dir``.

    ``callbacks`` are extra Trainer callbacks (probes read loss and gradient norms through them).
    ``verify=False`` (probes) skips saving and checking the adapter.
    """
    if not rows:
        raise ValueError("No training examples")
    seed_everything(settings.seed)
    if session.plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the peak of this run, not of the process
    trainer = _build_trainer(session, rows, settings, output_dir)
    for callback in callbacks:
        trainer.add_callback(callback)
    started = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - started
    adapter_dir = output_dir / "adapter"
    checksums: dict[str, str] = {}
    if verify:
        trainer.model.save_pretrained(adapter_dir)
        checksums = verify_adapter(trainer.model, adapter_dir)
    result = TrainingResult(
        adapter_dir=adapter_dir,
        loss_history=_loss_history(trainer.state.log_history),
        train_runtime_s=runtime,
        peak_memory_mb=_peak_memory_mb(session.plan),
        adapter_sha256=checksums,
        num_examples=len(rows),
        num_steps=int(trainer.state.global_step),
        supervised_tokens=sum(sum(1 for label in row["labels"] if label != IGNORE_INDEX) for row in rows),
    )
    del trainer
    release_accelerator_memory()
    return result


def _build_trainer(session: ModelSession, rows: list[dict[str, list[int]]], settings: TrainingSettings,
                   output_dir: Path) -> Any:
    """TRL's SFTTrainer (answer-window loss unless ``training.loss_window=full``) on the session's base model."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    lora = settings.lora
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=session.lora_target_modules(lora.target_modules), task_type="CAUSAL_LM")
    warning_filters.install()
    if settings.loss_window == "answer":
        trainer_class: type = answer_window_trainer_class()
        collator: Any = LeftPadCollator(session.tokenizer.pad_token_id)
    else:
        trainer_class, collator = SFTTrainer, None  # TRL's own collator and loss
    trainer = trainer_class(
        model=session.load_model(),
        args=_sft_config(settings, session.plan, output_dir, len(rows)),
        train_dataset=Dataset.from_list(rows),
        processing_class=session.tokenizer,
        peft_config=peft_config,
        data_collator=collator,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_LossLogger())
    return trainer


def _sft_config(settings: TrainingSettings, plan: ComputePlan, output_dir: Path, num_rows: int) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir / "trainer"),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=warmup_steps(settings, num_rows),
        weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler_type,
        logging_steps=settings.logging_steps,
        gradient_checkpointing=settings.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        seed=settings.seed,
        data_seed=settings.seed,
        # SFTConfig turns bf16 on by default; precision comes from the session's compute plan instead.
        bf16=plan.bf16,
        fp16=plan.fp16,
        use_cpu=plan.device == "cpu",
        max_length=None,  # the formatter already bounded each row, keeping the answer intact
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        completion_only_loss=False,  # labels are already masked to the answer by the formatter
    )


def _loss_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [
        {"step": float(entry["step"]), "loss": float(entry["loss"]),
         "grad_norm": float(entry.get("grad_norm", float("nan"))),
         "learning_rate": float(entry.get("learning_rate", float("nan")))}
        for entry in log_history if "loss" in entry
    ]


def fine_tune(train: Any, session: ModelSession, task: Task, training: dict[str, Any], workdir: Path,
              callbacks: Sequence[TrainerCallback] = ()) -> tuple[Path, dict[str, Any]]:
    """The whole fine-tune of one configuration: the one path used by the sft_training pipeline, the
    sensitivity sweep and the probes. Returns the adapter folder (inside ``workdir``) and the training
    summary (loss history, checksums, cost, and the settings the session actually ran with)."""
    settings = TrainingSettings.from_params(training)
    records = train.to_dict("records")
    truncated_before = session.formatter.truncated_prompts
    rows = build_training_rows(session.formatter, records, [task.target(record) for record in records])
    truncated = session.formatter.truncated_prompts - truncated_before
    if truncated:
        logger.warning("%d of %d training records were longer than model.max_length=%d: their input was "
                       "shortened (never the answer)", truncated, len(records), session.formatter.max_length)
    result = train_lora(session, rows, settings, workdir, callbacks=callbacks)
    summary = {
        "model_name": session.resolved.name,
        **session.record(),
        "train_runtime_s": result.train_runtime_s,
        "peak_memory_mb": result.peak_memory_mb,
        "num_examples": result.num_examples,
        "records_truncated": truncated,
        "num_steps": result.num_steps,
        "supervised_tokens": result.supervised_tokens,
        "adapter_sha256": result.adapter_sha256,
        "loss_history": result.loss_history,
        "effective_batch_size": settings.effective_batch_size,
        "lora_target_modules": session.lora_target_modules(settings.lora.target_modules),
    }
    return result.adapter_dir, summary
