"""Padding waste of training batches: the share of computed tokens that are padding, as the trainer builds them.

For the bundled task and LIAR (``../shared/data/liar``, skipped when absent), the training subset that
``mini_test100`` trains on is tokenised by the model session's formatter, the project's trainer is built
(``sft_trainer.build_trainer``: TRL's SFTTrainer, its sampler and the left-padding collator), and every batch of
``training.num_train_epochs`` epochs of its dataloader is counted: padding share = padded positions /
(rows x batch width). Printed with ``training.group_by_length`` off (random batches) and on (the HF
length-grouped sampler). The test set's prompt batches of label scoring and generation are counted the same
way, in input order and grouped by length. Counts only, nothing is timed. Usage:

    .venv/bin/python benchmarks/measure_padding_waste.py [--model SmolLM2-135M-Instruct] [--train-per-class 100]
        [--write-docs]    # also rewrite its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from docs_section import stamp, write_section

from finetune_predictor.data import task_data
from finetune_predictor.modeling.batching import length_grouped_batches, padding_share
from finetune_predictor.modeling.model_session import open_session
from finetune_predictor.modeling.sft_trainer import build_trainer
from finetune_predictor.modeling.training import build_training_rows
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import build_task

LIAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "liar"
DATASETS: dict[str, dict[str, Any]] = {
    "bundled": {},
    "liar": {"path": str(LIAR / "liar_train_alpaca.jsonl"), "test_path": str(LIAR / "liar_test_alpaca.jsonl"),
             "label_positive": "fake", "label_negative": "real"},
}


def tokenised(session: Any, data: dict[str, Any], train_per_class: int) -> tuple[list[dict[str, list[int]]],
                                                                                list[list[int]]]:
    """The training rows of the subset of ``train_per_class`` examples per class, and the test set's prompts."""
    records, _rejects, summary = task_data.load_task_records(data)
    subsets, test, *_ = task_data.nested_subsets(records, summary, data, [train_per_class])
    train = task_data.subset(subsets, train_per_class)
    task = build_task(data, train["output"])
    rows = train.to_dict("records")
    prompts = [session.formatter.prompt_ids(str(r["instruction"]), str(r.get("input") or ""))
               for r in test.to_dict("records")]
    return build_training_rows(session.formatter, rows, [task.target(row) for row in rows]), prompts


def evaluation_padding(prompts: list[list[int]], batch_size: int, grouped: bool) -> float:
    """Padding share of the label-scoring / generation prompt batches (``batching.length_grouped_batches``)."""
    batches = [[prompts[i] for i in rows] for rows in length_grouped_batches([len(p) for p in prompts], batch_size,
                                                                             grouped)]
    computed = sum(len(batch) * max(len(p) for p in batch) for batch in batches)
    return sum(padding_share(batch) * len(batch) * max(len(p) for p in batch) for batch in batches) / computed


def trainer_padding_share(session: Any, rows: list[dict[str, list[int]]],
                          settings: TrainingSettings) -> tuple[float, int]:
    """Padding share over every batch of the trainer's dataloader for the settings' epochs, and the batches."""
    padded = computed = batches = 0
    with tempfile.TemporaryDirectory() as workdir:
        trainer = build_trainer(session, rows, settings, Path(workdir))
        for epoch in range(max(1, int(settings.num_train_epochs))):
            loader = trainer.get_train_dataloader()
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for batch in loader:
                mask = batch["attention_mask"]
                computed += mask.numel()
                padded += int((mask == 0).sum())
                batches += 1
    return padded / computed, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/performance.md")
    args = parser.parse_args()

    base = {**task_data_defaults(), "train_per_class": args.train_per_class}
    session = open_session({"name": args.model, "max_length": args.max_length}, None, "train", "fp32")
    print(f"padding share of training batches (batch {args.batch_size}, {args.epochs:g} epochs, "
          f"{args.train_per_class} per class, max_length {args.max_length})")
    table = []
    for name, overrides in DATASETS.items():
        if name == "liar" and not LIAR.is_dir():
            print(f"{name:>8}: skipped, {LIAR} is absent")
            continue
        rows, prompts = tokenised(session, {**base, **overrides}, args.train_per_class)
        shares = {}
        for grouped in (False, True):
            settings = TrainingSettings.from_params({"per_device_train_batch_size": args.batch_size,
                                                     "num_train_epochs": args.epochs, "precision": "fp32",
                                                     "group_by_length": grouped})
            shares[grouped], batches = trainer_padding_share(session, rows, settings)
        lengths = sorted(len(row["input_ids"]) for row in rows)
        print(f"{name:>8}: {len(rows)} rows, lengths {lengths[0]}-{lengths[-1]} (median {lengths[len(lengths) // 2]}), "
              f"{batches} batches: random {100 * shares[False]:.1f}% padding, "
              f"grouped by length {100 * shares[True]:.1f}%")
        evaluation = [evaluation_padding(prompts, args.eval_batch_size, grouped) for grouped in (False, True)]
        print(f"{'':>8}  evaluation prompts ({len(prompts)}, batch {args.eval_batch_size}): input order "
              f"{100 * evaluation[0]:.1f}% padding, grouped by length {100 * evaluation[1]:.1f}%")
        table.append((name, len(rows), shares[False], shares[True], evaluation[0], evaluation[1]))
    if args.write_docs:
        write_docs(args, table)


def write_docs(args: argparse.Namespace, table: list[tuple[str, int, float, float, float, float]]) -> None:
    """The ``measure_padding_waste`` section of docs/performance.md (a count, not a timing)."""
    lines = [f"Padding share of the trainer's batches (batch {args.batch_size}, {args.epochs:g} epochs, "
             f"{args.train_per_class} per class) and of the test set's prompt batches (batch {args.eval_batch_size}). "
             "A count, not a timing.", "",
             "| data | training rows | training, random batches | training, grouped by length "
             "(`training.group_by_length`) | evaluation, input order | evaluation, grouped by length |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {rows} | {100 * a:.1f} % | {100 * b:.1f} % | {100 * c:.1f} % | {100 * d:.1f} % |"
              for name, rows, a, b, c, d in table]
    command = shlex.join(["python", "benchmarks/measure_padding_waste.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", "measure_padding_waste", "\n".join(lines) + "\n\n"
                                 + stamp(command)))


def task_data_defaults() -> dict[str, Any]:
    """``conf/base/parameters_data.yml``'s data group: the settings mini_test100 reads its task with."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_data.yml"
    return dict(yaml.safe_load(path.read_text())["data"])


if __name__ == "__main__":
    main()
