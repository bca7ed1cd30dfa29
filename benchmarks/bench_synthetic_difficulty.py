"""How hard the bundled task is at each difficulty: the Bayes ceiling (exact), the accuracy of one keyword
regular expression, and TF-IDF + logistic regression (the classical baseline) at several training sizes,
all on the same 2,000-example held-out test set. CPU only, seconds.

    python benchmarks/bench_synthetic_difficulty.py
    python benchmarks/bench_synthetic_difficulty.py --write-docs   # and rewrite its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys

import pandas as pd
from docs_section import stamp, write_section

from finetune_predictor.data.synthetic_news import DIFFICULTIES, bayes_ceiling, iter_articles
from finetune_predictor.modeling.classical import classical_metrics
from finetune_predictor.tasks import build_task

KEYWORDS = re.compile(r"insiders|whispering|shared|anonymous")
TASK = build_task({"label_positive": "fake", "label_negative": "legitimate"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/performance.md")
    args = parser.parse_args()
    rows = []
    for name in DIFFICULTIES:
        frame = pd.DataFrame(iter_articles(12000, seed=7, difficulty=name))
        test, pool = frame.iloc[:2000], frame.iloc[2000:]
        keyword = test["input"].str.contains(KEYWORDS).map({True: "fake", False: "legitimate"})
        row = {"difficulty": name, "bayes_ceiling": bayes_ceiling(name),
               "keyword_regex": float((keyword == test["output"]).mean())}
        for size in (200, 1000, 10000):
            row[f"tfidf_lr_n{size}"] = classical_metrics(pool.iloc[:size], test, TASK)["accuracy"]
        rows.append(row)
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    if args.write_docs:
        write_docs(rows)


def write_docs(rows: list[dict]) -> None:
    """The ``bench_synthetic_difficulty`` section of docs/performance.md."""
    lines = ["Accuracy on a 2,000-example held-out test set of the bundled task, per `data.synthetic.difficulty`. "
             f"The keyword regex is `{KEYWORDS.pattern}`.", "",
             "| difficulty | Bayes ceiling | one keyword regex | TF-IDF + LR, n=200 | n=1,000 | n=10,000 |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join([row["difficulty"], *(f"{100 * row[key]:.1f} %" for key in (
        "bayes_ceiling", "keyword_regex", "tfidf_lr_n200", "tfidf_lr_n1000", "tfidf_lr_n10000"))]) + " |"
        for row in rows]
    command = shlex.join(["python", "benchmarks/bench_synthetic_difficulty.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", "bench_synthetic_difficulty", "\n".join(lines) + "\n\n"
                                 + stamp(command)))


if __name__ == "__main__":
    main()
