"""The project's training path beside a bare PyTorch loop: median seconds per optimiser step and their ratio.

Both run in one process on the same base model, the same PEFT LoRA configuration, precision and batch
shapes (rows of one token length, so every batch is the same tensor shape whatever the sampler), with the
same loss (the answer window of left-padded rows, ``training.loss_window``):

- project: ``training.train_lora`` (TRL's SFTTrainer with the project's collator and loss);
- bare: ``get_peft_model`` + ``torch.optim.AdamW`` and a plain loop: collate, forward, backward, clip the
  gradient norm at 1.0 as the Trainer does, optimiser step, zero the gradients (no scheduler, no logging).

A step's time is the interval between the ends of consecutive optimiser steps, so it includes what the
step costs beyond forward and backward (data loading, collation, callbacks); the first ``--warmup`` steps of
each run are dropped. The two paths alternate ``--repeats`` times to even out a drifting machine.
``ratio`` = bare median / project median: 1.0 means the project's path costs nothing over the bare loop;
the target is >= 0.85. Usage:

    .venv/bin/python benchmarks/bench_training_vs_bare_loop.py [--model SmolLM2-135M-Instruct] [--steps 12]
        [--batch-size 8] [--precision auto] [--loss-window answer] [--repeats 2] [--write-docs]

``--write-docs`` also rewrites its section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import time
from typing import Any

import torch
from bench_training_step import equal_length_rows, project_step_intervals
from docs_section import stamp, write_section

from finetune_predictor.modeling.batching import LeftPadCollator, answer_window
from finetune_predictor.modeling.model_session import ModelSession, open_session
from finetune_predictor.modeling.training import seed_everything
from finetune_predictor.settings_schema import TrainingSettings


def bare_step_intervals(session: ModelSession, rows: list[dict[str, list[int]]],
                        settings: TrainingSettings) -> list[float]:
    """Seconds per optimiser step of a plain PyTorch loop over the same rows, in order."""
    from peft import LoraConfig, get_peft_model

    seed_everything(settings.seed)
    lora, plan = settings.lora, session.plan
    model = get_peft_model(session.load_model(), LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
        target_modules=session.lora_target_modules(lora.target_modules)))
    model.train()
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    autocast_dtype = torch.bfloat16 if plan.bf16 else torch.float16 if plan.fp16 else None
    scaler = torch.amp.GradScaler(plan.device, enabled=plan.fp16)
    collate = LeftPadCollator(session.tokenizer.pad_token_id)
    micro, accumulation = settings.per_device_train_batch_size, settings.gradient_accumulation_steps
    device = next(model.parameters()).device
    ends = [time.perf_counter()]
    for start in range(0, len(rows) - micro * accumulation + 1, micro * accumulation):
        for offset in range(start, start + micro * accumulation, micro):
            batch = {key: value.to(device) for key, value in collate(rows[offset:offset + micro]).items()}
            with torch.autocast(plan.device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = _loss(model, batch, settings.loss_window) / accumulation
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if plan.device == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    del model, optimizer
    return [later - earlier for earlier, later in itertools.pairwise(ends)]


def _loss(model: Any, batch: dict[str, torch.Tensor], window: str) -> torch.Tensor:
    """The causal-LM loss of the project's trainer: on the answer window (``answer``) or every position."""
    if window == "full":
        return model(**batch).loss
    keep = answer_window(batch["labels"])
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], labels=batch["labels"][:, -keep:], logits_to_keep=keep,
                 use_cache=False).loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="a registry name, HF id or local folder")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--loss-window", default="answer", choices=("answer", "full"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/performance.md")
    args = parser.parse_args()

    session = open_session({"name": args.model, "max_length": args.max_length}, None, "train", args.precision)
    settings = TrainingSettings.from_params({
        "max_steps": args.steps, "per_device_train_batch_size": args.batch_size, "precision": args.precision,
        "gradient_accumulation_steps": args.gradient_accumulation, "loss_window": args.loss_window,
        "warmup_ratio": 0.0, "eval_steps": 0})
    rows = equal_length_rows(session.formatter, args.steps * settings.effective_batch_size)
    kept: dict[str, list[float]] = {"project": [], "bare": []}
    for _ in range(args.repeats):
        kept["project"] += project_step_intervals(session, rows, settings)[args.warmup:]
        kept["bare"] += bare_step_intervals(session, rows, settings)[args.warmup:]
    medians = {path: statistics.median(times) for path, times in kept.items()}
    print(f"{args.model} | {session.plan.device} {session.plan.precision_name} | batch {args.batch_size} x "
          f"{len(rows[0]['input_ids'])} tokens x {args.gradient_accumulation} accumulation | "
          f"loss_window={args.loss_window} | {len(kept['project'])} steps kept per path")
    for path, median in medians.items():
        print(f"  {path:>7}: median {median:.3f} s/step")
    ratio = medians["bare"] / medians["project"]
    print(f"  ratio (bare / project): {ratio:.2f} (target >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'})")
    if args.write_docs:
        shape = (f"{args.model}, {session.plan.device} {session.plan.precision_name}, batch {args.batch_size} x "
                 f"{len(rows[0]['input_ids'])} tokens x {args.gradient_accumulation} accumulation, "
                 f"loss_window={args.loss_window}, {len(kept['project'])} steps kept per path")
        write_docs(shape, medians)


def write_docs(shape: str, medians: dict[str, float]) -> None:
    """The ``bench_training_vs_bare_loop`` section of docs/performance.md."""
    ratio = medians["bare"] / medians["project"]
    lines = [f"{shape}.", "", "| path | median s/step |", "|---|---|",
             *(f"| {path} | {median:.3f} |" for path, median in medians.items()), "",
             f"Ratio bare / project: **{ratio:.2f}** (target ≥ 0.85: {'met' if ratio >= 0.85 else 'not met'})."]
    command = shlex.join(["python", "benchmarks/bench_training_vs_bare_loop.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", "bench_training_vs_bare_loop", "\n".join(lines) + "\n\n"
                                 + stamp(command)))


if __name__ == "__main__":
    main()
