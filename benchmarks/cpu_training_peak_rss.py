"""Peak RSS of real LoRA steps of the embedded model on this CPU, beside the preflight's memory estimate.

Two optimiser steps through the project's own training path (batch 8 of the bundled task's longest rows), then
the process's peak RSS (``resource.getrusage``) less its RSS before the weights loaded, which is what the
preflight estimates (weights + LoRA/optimizer + activations, before its margin). No timing. Usage:

    .venv/bin/python benchmarks/cpu_training_peak_rss.py [--precision fp32|auto] [--steps 2] [--rows 16]
        [--write-docs]    # also rewrite section cpu_training_peak_rss[_<precision>] of docs/performance.md
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import tempfile
from pathlib import Path

import yaml
from docs_section import stamp, write_section

from finetune_predictor.modeling.memory_estimate import GIB, estimate_training_memory, model_shape
from finetune_predictor.settings_schema import TrainingSettings

REGISTRY = Path(__file__).resolve().parents[1] / "conf/base/parameters_model_registry.yml"


def current_rss_bytes() -> int:
    """The process's resident set now (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite section cpu_training_peak_rss[_<precision>] of docs/performance.md")
    args = parser.parse_args()

    import datasets  # noqa: F401  (imported before the baseline, as a training run has them loaded)
    import peft  # noqa: F401
    import trl  # noqa: F401

    from finetune_predictor.data.task_data import bundled_records
    from finetune_predictor.modeling.model_session import open_session
    from finetune_predictor.modeling.training import build_training_rows, train_lora

    registry = yaml.safe_load(REGISTRY.read_text())["model_registry"]
    session = open_session({"name": "SmolLM2-135M-Instruct", "max_length": 512}, registry, "train", args.precision)
    records = bundled_records({"task": "binary_classification", "synthetic": {"num_records": 2000}})
    records = records.loc[(records["instruction"].str.len() + records["input"].str.len()).nlargest(args.rows).index]
    rows = build_training_rows(session.formatter, records.to_dict("records"), records["output"].tolist())
    settings = TrainingSettings.from_params({"max_steps": args.steps, "per_device_train_batch_size": 8,
                                             "precision": args.precision})
    before = current_rss_bytes()
    with tempfile.TemporaryDirectory() as folder:
        train_lora(session, rows, settings, Path(folder), verify=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    longest = max(len(row["input_ids"]) for row in rows)
    estimate = estimate_training_memory(0.135, session.plan, settings, model_shape(session.resolved), longest, 1.0)
    line = (f"{session.plan.precision_name} on {session.plan.device}, batch 8 x {longest} tokens: peak RSS "
            f"{peak / GIB:.2f} GiB, of which training {(peak - before) / GIB:.2f} GiB; preflight estimate "
            f"{estimate.describe()}")
    print(line)
    if args.write_docs:
        markdown = (f"{args.steps} LoRA steps of SmolLM2-135M-Instruct through `training.train_lora` on the bundled "
                    f"task's {args.rows} longest rows, batch 8:\n\n{line}.")
        section = "cpu_training_peak_rss" + ("" if args.precision == "fp32" else f"_{args.precision}")
        command = shlex.join(["python", "benchmarks/cpu_training_peak_rss.py", *sys.argv[1:]])
        print("wrote", write_section("docs/performance.md", section, markdown + "\n\n" + stamp(command)))


if __name__ == "__main__":
    main()
