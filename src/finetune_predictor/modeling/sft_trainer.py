"""TRL's ``SFTTrainer`` as the project builds it for one LoRA / QLoRA fine-tune.

The LoRA config on the session's base model, the answer-window loss (with the left-padding collator) unless
``training.loss_window=full``, the Trainer's arguments (precision from the session's compute plan, warm-up
rounded down, checkpoints only into a folder the caller keeps), and the callbacks every fine-tune carries:
progress through the logging module, and a held-out evaluation after the last step that leaves the random
generators as it found them. ``training.train_lora`` runs what :func:`build_trainer` builds.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from finetune_predictor import warning_filters
from finetune_predictor.modeling import checkpoints
from finetune_predictor.modeling.batching import LeftPadCollator, answer_window
from finetune_predictor.modeling.hardware import ComputePlan
from finetune_predictor.modeling.model_session import ModelSession
from finetune_predictor.settings_schema import TrainingSettings

# Training progress keeps the logger name it had before the trainer's construction moved out of training.py:
# the log lines name it, and whoever filters or reads them by name finds it unchanged.
logger = logging.getLogger("finetune_predictor.modeling.training")


def build_trainer(session: ModelSession, rows: list[dict[str, list[int]]], settings: TrainingSettings,
                  output_dir: Path, eval_rows: list[dict[str, list[int]]] | None = None,
                  checkpoint_dir: Path | None = None) -> Any:
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
        args=sft_config(settings, session.plan, output_dir, len(rows), evaluate=bool(eval_rows),
                        checkpoint_dir=checkpoint_dir),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=session.tokenizer,
        peft_config=peft_config,
        data_collator=collator,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_LossLogger())
    if eval_rows:
        trainer.add_callback(_EvaluateAtEnd())
        trainer.evaluate = _without_touching_randomness(trainer.evaluate)  # the Trainer's loop calls self.evaluate
    return trainer


def sft_config(settings: TrainingSettings, plan: ComputePlan, output_dir: Path, num_rows: int,
               evaluate: bool = False, checkpoint_dir: Path | None = None) -> Any:
    """The Trainer's arguments; checkpoints (every ``training.checkpoint_steps`` and after the last step, the
    last two kept) only into a ``checkpoint_dir`` the caller keeps for this configuration."""
    from trl import SFTConfig

    return SFTConfig(
        eval_strategy="steps" if evaluate else "no",
        eval_steps=settings.eval_steps if evaluate else None,
        per_device_eval_batch_size=settings.per_device_train_batch_size,
        prediction_loss_only=True,  # the loss only: no logits gathered over the held-out set
        output_dir=str(checkpoint_dir if checkpoint_dir is not None else output_dir / "trainer"),
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
        save_strategy="steps" if checkpoint_dir is not None else "no",
        save_steps=settings.checkpoint_steps if checkpoint_dir is not None else 500,
        save_total_limit=checkpoints.SAVE_TOTAL_LIMIT,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        completion_only_loss=False,  # labels are already masked to the answer by the formatter
    )


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


class _LossLogger(TrainerCallback):
    """Progress through the logging module (the Trainer's printer writes raw dicts to stdout)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs and (state.global_step % 10 == 0 or state.global_step == state.max_steps):
            logger.info("step %d/%d loss %.4f", state.global_step, state.max_steps, float(logs["loss"]))


class _EvaluateAtEnd(TrainerCallback):
    """Evaluate after the last step too, so the held-out curve ends where training ends."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == state.max_steps:
            control.should_evaluate = True


def _without_touching_randomness(evaluate: Any) -> Any:
    """``evaluate`` with every random generator restored afterwards. Evaluating draws from the global RNGs
    (the held-out dataloader), and LoRA dropout masks come from them: without this, turning the held-out curve
    on changed the losses and the adapter that training produced."""
    import random

    import numpy as np

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                  torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        try:
            return evaluate(*args, **kwargs)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
            if states[3] is not None:
                torch.cuda.set_rng_state_all(states[3])

    return wrapped
