"""Label-scoring rules measured: accuracy and predicted-label shares of the base and the fine-tuned model
under ``evaluation.label_scoring`` = sum, mean and calibrated, on a finished run's own test set.

The log-probabilities are computed once per model; the rules are applied to them (and, for calibrated,
to one content-free prompt per instruction), so the comparison costs two scoring passes.

    python benchmarks/measure_label_scoring.py --test data/03_primary/test_set.parquet/<version>/test_set.parquet \
        --adapter data/06_models/adapter/<version>/adapter --positive fake --negative legitimate \
        --label bundled_easy --write-docs   # and rewrite section measure_label_scoring_<label> of docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys

import numpy as np
import pandas as pd
from docs_section import stamp, write_section

from finetune_predictor.modeling.evaluation import LABEL_SCORING, label_scores
from finetune_predictor.modeling.model_session import open_session
from finetune_predictor.modeling.scoring import score_candidates
from finetune_predictor.tasks import build_task


def measure(test: pd.DataFrame, adapter: str | None, task_params: dict, model: dict) -> dict[str, dict]:
    task = build_task(task_params)
    candidates = task.candidates()
    session = open_session(model, None, "evaluate")
    network = session.load_model(adapter)
    records = test.to_dict("records")
    references = np.array([task.target(r) for r in records])
    log_probs = score_candidates(network, session.formatter, records, candidates)
    out = {}
    for rule in LABEL_SCORING:
        scores = label_scores(log_probs, rule, network, session, records, candidates)
        predicted = np.array(candidates)[scores.argmax(axis=1)]
        out[rule] = {"accuracy": float(np.mean(predicted == references)),
                     **{f"share_{label}": float(np.mean(predicted == label)) for label in candidates}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--positive", default="fake")
    parser.add_argument("--negative", default="legitimate")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--label", default="run", help="a name for this run's data in the docs, e.g. bundled_easy")
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite section measure_label_scoring_<label> of docs/performance.md")
    args = parser.parse_args()
    test = pd.read_parquet(args.test)
    task = {"task": "binary_classification", "label_positive": args.positive, "label_negative": args.negative}
    model = {"name": args.model, "max_length": 512}
    result = {"base": measure(test, None, task, model), "finetuned": measure(test, args.adapter, task, model)}
    print(json.dumps(result, indent=1))
    for which, rules in result.items():
        for rule, values in rules.items():
            print(f"{which:<9} {rule:<10} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
    if args.write_docs:
        write_docs(args, len(test), result)


def write_docs(args: argparse.Namespace, examples: int, result: dict[str, dict]) -> None:
    """Section ``measure_label_scoring_<label>`` of docs/performance.md: accuracy and label shares per rule."""
    lines = [f"`{args.label}`: {examples} test examples (`{args.test}`), {args.model}, base and fine-tuned "
             f"(`{args.adapter}`), under each `evaluation.label_scoring` rule.", "",
             "| model | rule | accuracy | predicted-label shares |", "|---|---|---|---|"]
    for which, rules in result.items():
        for rule, values in rules.items():
            shares = ", ".join(f"{key.removeprefix('share_')} {100 * value:.1f} %" for key, value in values.items()
                               if key.startswith("share_"))
            lines.append(f"| {which} | {rule} | {100 * values['accuracy']:.1f} % | {shares} |")
    section = "measure_label_scoring_" + re.sub(r"[^A-Za-z0-9_]+", "_", args.label)
    command = shlex.join(["python", "benchmarks/measure_label_scoring.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", section, "\n".join(lines) + "\n\n" + stamp(command)))


if __name__ == "__main__":
    main()
