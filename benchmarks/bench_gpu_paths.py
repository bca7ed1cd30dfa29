"""The GPU code paths on a CUDA machine: LoRA (bf16) against QLoRA (bitsandbytes NF4 4-bit) fine-tunes
of the same model on the same data, each evaluated on one fixed test set through the project's own
training and evaluation code (label scoring + generation with the HF engine, and with vLLM + LoRARequest
when vllm is installed). Prints, per path, the median step time, the peak GPU memory, the loss, the
adapter check and the accuracy, and the ratios QLoRA/LoRA, measured in one run. Usage:

    python benchmarks/bench_gpu_paths.py --model SmolLM2-135M-Instruct [--per-class 100] [--epochs 3]
    python benchmarks/bench_gpu_paths.py --model /models/Qwen2.5-7B-Instruct --per-class 500
    python benchmarks/bench_gpu_paths.py --model SmolLM2-135M-Instruct --write-docs   # and rewrite its docs section

``--random-init`` keeps the model's config and tokenizer but draws fresh weights: it checks the mechanics
(4-bit load, k-bit preparation, adapter training, merge, scoring, generation) where the weights cannot
travel, and says nothing about accuracy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from docs_section import stamp, write_section

from finetune_predictor.data import task_data
from finetune_predictor.modeling.evaluation import metrics_of, predict
from finetune_predictor.modeling.hardware import release_accelerator_memory
from finetune_predictor.modeling.model_session import open_session, resolve_model
from finetune_predictor.modeling.scoring import vllm_available
from finetune_predictor.modeling.training import StepTimer, fine_tune
from finetune_predictor.tasks import build_task

DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"}


def train_and_test(per_class: int, test_per_class: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bundled task split as the pipelines split it: balanced, deduplicated, train disjoint from test."""
    data = {**DATA, "train_per_class": per_class, "test_per_class": test_per_class}
    records, _, read = task_data.load_task_records(data)
    train, test, _ = task_data.split_train_test(records, read, data)
    return train, test


def random_init_copy(source: str, target: Path, overrides: dict[str, Any] | None = None) -> str:
    """The model's config (with ``overrides``, e.g. a 7B's widths) and tokenizer with freshly drawn weights,
    saved to ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(source).path
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(path)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    print(f"random-init model: {model.num_parameters() / 1e9:.2f}B parameters, hidden {config.hidden_size}, "
          f"{config.num_hidden_layers} layers")
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(path).save_pretrained(target)
    return str(target)


def run_path(quantization: str, model: dict[str, Any], train: pd.DataFrame, test: pd.DataFrame,
             training: dict[str, Any], engines: list[str], workdir: Path) -> dict[str, Any]:
    # Loading alone: its transient peak and what the loaded model holds, apart from training's peak.
    session = open_session({**model, "quantization": quantization}, None, "train")
    torch.cuda.reset_peak_memory_stats()
    loaded = session.load_model()
    load_held, load_peak = torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20
    del loaded
    release_accelerator_memory()
    timer = StepTimer()
    task = build_task(DATA)
    adapter, summary = fine_tune(train, session, task, training, workdir / quantization, callbacks=[timer])
    row: dict[str, Any] = {
        "path": "QLoRA nf4" if quantization == "4bit" else "LoRA",
        "precision": summary["precision"], "steps": summary["num_steps"],
        "median_step_s": statistics.median(timer.durations[2:] or timer.durations),
        "train_s": summary["train_runtime_s"], "loaded_model_mib": load_held,
        "load_peak_mib": load_peak, "peak_train_mib": summary["peak_memory_mb"],
        "held_after_mib": torch.cuda.memory_allocated() / 2**20,
        "first_loss": summary["loss_history"][0]["loss"], "last_loss": summary["loss_history"][-1]["loss"],
        "adapter_files": len(summary["adapter_sha256"]),
    }
    for engine in engines:
        evaluation = {"engine": engine, "batch_size": 32, "max_new_tokens": 4}
        # The adapter is scored on the base it was trained on (4-bit for QLoRA), as the pipelines do.
        predictions = predict(test, task, session.with_purpose("evaluate"), evaluation, str(adapter))
        metrics = metrics_of(predictions, task)
        row[f"{engine}_accuracy"] = metrics["accuracy"]
        row[f"{engine}_gen_accuracy"] = metrics.get("gen_accuracy")
        row[f"{engine}_parse_failure_rate"] = metrics.get("gen_parse_failure_rate")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--config-overrides", type=json.loads, default=None,
                        help='with --random-init, e.g. \'{"hidden_size": 4096, "num_hidden_layers": 32}\'')
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/performance.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_paths needs a CUDA GPU (bitsandbytes 4-bit and vLLM are GPU-only)")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    if args.config_overrides and not args.random_init:
        raise SystemExit("--config-overrides only applies with --random-init")

    train, test = train_and_test(args.per_class, args.test_per_class)
    training = {"learning_rate": args.learning_rate, "num_train_epochs": args.epochs,
                "per_device_train_batch_size": 8, "logging_steps": 5, "seed": 42}
    engines = ["hf"] + (["vllm"] if vllm_available() else [])
    if "vllm" not in engines:
        print("vllm is not installed here: generation uses the HF engine only")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        name = (random_init_copy(args.model, workdir / "random-init", args.config_overrides) if args.random_init
                else args.model)
        model = {"name": name, "max_length": 512}
        rows = [run_path(quantization, model, train, test, training, engines, workdir)
                for quantization in ("none", "4bit")]
    table = pd.DataFrame(rows).set_index("path")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.T.to_string())
    lora, qlora = table.loc["LoRA"], table.loc["QLoRA nf4"]
    ratios = (f"QLoRA / LoRA: peak training memory {qlora.peak_train_mib / lora.peak_train_mib:.2f}x, "
              f"median step time {qlora.median_step_s / lora.median_step_s:.2f}x, "
              f"accuracy {100 * (qlora.hf_accuracy - lora.hf_accuracy):+.1f} points")
    print(ratios)
    if args.write_docs:
        write_docs(args, table, ratios, engines)


def write_docs(args: argparse.Namespace, table: pd.DataFrame, ratios: str, engines: list[str]) -> None:
    """The ``bench_gpu_paths`` section of docs/performance.md: one column per path, one row per figure."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    weights = "fresh weights (`--random-init`), so accuracy means nothing" if args.random_init else "its own weights"
    lines = [f"`{args.model}` with {weights}; {args.per_class} training examples per class, {args.epochs:g} "
             f"epochs; evaluation engines: {', '.join(engines)}. Memory in MiB.", "",
             "| figure | " + " | ".join(table.index) + " |", "|---" * (len(table.index) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(value) for value in table[name]) + " |" for name in table.columns]
    lines += ["", ratios + "."]
    command = shlex.join(["python", "benchmarks/bench_gpu_paths.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", "bench_gpu_paths", "\n".join(lines) + "\n\n"
                                 + stamp(command)))


if __name__ == "__main__":
    main()
