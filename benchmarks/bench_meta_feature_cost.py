"""Cost of the meta-features (probes included) against the full fine-tune they predict, in one run.

For a candidate configuration it measures, on this machine:
  1. the wall time of every meta-feature, probes included (``compute_meta_features``, cache off);
  2. the median time of a real training step of the full configuration (same code path, same batch);
and prints the full fine-tune's cost as median step time x its planned number of steps, and the ratio.
``--full-run`` also trains the whole configuration and uses its measured wall time instead of the
step-time estimate. Usage:

    .venv/bin/python benchmarks/bench_meta_feature_cost.py [--per-class 1000] [--epochs 3] [--full-run]
        [--write-docs]    # also rewrite its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from docs_section import stamp, write_section

from finetune_predictor.data import task_data
from finetune_predictor.modeling.model_session import open_session
from finetune_predictor.modeling.training import StepTimer, fine_tune
from finetune_predictor.prediction.meta_features import ProbeSettings, compute_meta_features
from finetune_predictor.tasks import build_task

DATA = {"task": "binary_classification", "path": None, "test_path": None, "label_positive": "fake",
        "label_negative": "legitimate", "test_per_class": 100, "seed": 42,
        "synthetic": {"num_records": 24000, "seed": 7}}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--timing-steps", type=int, default=8)
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--sample-size", type=int, default=64)
    parser.add_argument("--full-run", action="store_true")
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/performance.md")
    args = parser.parse_args()

    data = {**DATA, "train_per_class": args.per_class}
    records, _, read = task_data.load_task_records(data)
    train, _, _ = task_data.split_train_test(records, read, data)
    model = {"name": "SmolLM2-135M-Instruct", "max_length": 512}
    training = {"num_train_epochs": args.epochs, "per_device_train_batch_size": 8}
    probe = ProbeSettings(sample_size=args.sample_size, probe_steps=args.probe_steps, cache=False)

    started = time.perf_counter()
    session, task = open_session(model, {}, "probe"), build_task(data)
    features = compute_meta_features(train, session, task, training, probe)
    feature_seconds = time.perf_counter() - started
    planned = int(features["mf_planned_steps"])

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as workdir:
        if args.full_run:
            started = time.perf_counter()
            fine_tune(train, session.with_purpose("train"), task, training, Path(workdir), callbacks=[timer])
            full_seconds = time.perf_counter() - started
            how = "measured full fine-tune"
        else:
            fine_tune(train.head(8 * args.timing_steps), session.with_purpose("train"), task,
                      {**training, "max_steps": args.timing_steps, "num_train_epochs": 1}, Path(workdir),
                      callbacks=[timer])
            step = statistics.median(timer.durations[2:])
            full_seconds = step * planned
            how = f"median step {step:.2f} s x {planned} planned steps"
    figures = pd.Series({"examples": len(train), "epochs": args.epochs, "planned_steps": planned,
                         "probe_steps": args.probe_steps, "feature_seconds": round(feature_seconds, 1),
                         "probe_seconds": round(features["mf_probe_seconds"], 1),
                         "full_finetune_seconds": round(full_seconds, 1)})
    print(figures.to_string())
    print(f"full fine-tune cost: {how}")
    ratio = feature_seconds / full_seconds
    print(f"ratio features/full fine-tune: {ratio:.3f} ({100 * ratio:.1f}%)")
    if args.write_docs:
        lines = ["The meta-features (probes included, cache off) against the full fine-tune of the same configuration "
                 "(bundled task, SmolLM2-135M-Instruct, batch 8).", "", "| figure | value |", "|---|---|",
                 *(f"| {name} | {value:g} |" for name, value in figures.items()), f"| full fine-tune cost | {how} |",
                 "", f"Ratio features / full fine-tune: **{ratio:.3f}** ({100 * ratio:.1f} %)."]
        command = shlex.join(["python", "benchmarks/bench_meta_feature_cost.py", *sys.argv[1:]])
        print("wrote", write_section("docs/performance.md", "bench_meta_feature_cost", "\n".join(lines) + "\n\n"
                                     + stamp(command)))


if __name__ == "__main__":
    main()
