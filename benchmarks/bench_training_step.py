"""LoRA step time of the embedded model through the project's own training path, per precision.

Prints the median seconds per optimiser step for each precision and loss window (``answer``: logits
for the answer tokens only, the project's default; ``full``: TRL's stock path) and their ratios,
measured in one run on this machine (the first steps are discarded as warm-up). Usage:

    .venv/bin/python benchmarks/bench_training_step.py [--steps 8] [--batch-size 8] [--precisions fp32,bf16]
        [--write-docs]    # also rewrite its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from docs_section import stamp, write_section
from transformers import TrainerCallback

from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.modeling.chat_format import PromptFormatter
from finetune_predictor.modeling.hardware import cpu_has_native_bf16
from finetune_predictor.modeling.model_session import ModelSession, open_session
from finetune_predictor.modeling.training import StepTimer, build_training_rows, train_lora
from finetune_predictor.settings_schema import TrainingSettings


class StepEnds(TrainerCallback):
    """Wall-clock time at the start of training and at the end of every optimiser step: the intervals
    include everything a step costs (data loading, collation, callbacks), not only forward/backward."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times = [time.perf_counter()]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter())

    @property
    def intervals(self) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.times)]


def equal_length_rows(formatter: PromptFormatter, count: int, seed: int = 3) -> list[dict[str, list[int]]]:
    """``count`` training rows of one token length (the most common one among generated articles, repeated
    where needed), so every batch of two training paths has the same shape whatever their sampler."""
    records = list(iter_articles(max(4 * count, 64), seed=seed))
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    length, _ = Counter(len(row["input_ids"]) for row in rows).most_common(1)[0]
    same = [row for row in rows if len(row["input_ids"]) == length]
    return [same[index % len(same)] for index in range(count)]


def project_step_intervals(session: ModelSession, rows: list[dict[str, list[int]]],
                           settings: TrainingSettings) -> list[float]:
    """Seconds per optimiser step of the project's training path (``training.train_lora``)."""
    ends = StepEnds()
    with tempfile.TemporaryDirectory() as workdir:
        train_lora(session, rows, settings, Path(workdir), callbacks=[ends])
    return ends.intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="a registry name, HF id or local folder")
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/performance.md")
    args = parser.parse_args()

    model = {"name": args.model, "max_length": 512}
    formatter = open_session(model, None, "train").formatter
    records = list(iter_articles(args.batch_size * args.steps, seed=3))
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    medians: dict[tuple[str, str], float] = {}
    for precision in args.precisions.split(","):
        if precision == "bf16" and not cpu_has_native_bf16():
            print(f"{precision}: skipped, this CPU has no native bf16 (it would be emulated, ~13x slower)")
            continue
        session = open_session(model, None, "train", precision)
        for window in ("full", "answer"):
            settings = TrainingSettings.from_params({"max_steps": args.steps, "precision": precision,
                                                     "per_device_train_batch_size": args.batch_size,
                                                     "loss_window": window})
            timer = StepTimer()
            with tempfile.TemporaryDirectory() as workdir:
                train_lora(session, rows, settings, Path(workdir), callbacks=[timer])
            kept = timer.durations[args.warmup:]
            medians[precision, window] = statistics.median(kept)
            print(f"{precision:>5} loss_window={window:<6}: median {medians[precision, window]:.2f} s/step over "
                  f"{len(kept)} steps (batch {args.batch_size}; all: {', '.join(f'{d:.2f}' for d in timer.durations)})")
    print("ratios (median step time, higher = faster than the reference):")
    reference = medians.get(("fp32", "full"))
    for (precision, window), median in medians.items():
        if reference and (precision, window) != ("fp32", "full"):
            print(f"  fp32/full over {precision}/{window}: {reference / median:.2f}x")
    for precision in args.precisions.split(","):
        if (precision, "full") in medians and (precision, "answer") in medians:
            ratio = medians[precision, "full"] / medians[precision, "answer"]
            print(f"  {precision}: full over answer window: {ratio:.2f}x")
    if args.write_docs:
        write_docs(args, medians)


def write_docs(args: argparse.Namespace, medians: dict[tuple[str, str], float]) -> None:
    """The ``bench_training_step`` section of docs/performance.md: median s/step per precision and loss window."""
    reference = medians.get(("fp32", "answer"))
    lines = [f"LoRA step of {args.model} through `training.train_lora`, batch {args.batch_size}, "
             f"{args.steps} steps (the first {args.warmup} dropped).", "",
             "| precision | loss window | median s/step | fp32 answer-window time / this |", "|---|---|---|---|"]
    lines += [f"| {precision} | {window} | {median:.2f} | {reference / median:.2f}x |" if reference else
              f"| {precision} | {window} | {median:.2f} | — |" for (precision, window), median in medians.items()]
    command = shlex.join(["python", "benchmarks/bench_training_step.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", "bench_training_step", "\n".join(lines) + "\n\n"
                                 + stamp(command)))


if __name__ == "__main__":
    main()
