"""How hard the bundled task is at each difficulty: the Bayes ceiling (exact), the accuracy of one keyword
regular expression, and TF-IDF + logistic regression (the classical baseline) at several training sizes,
all on the same 2,000-example held-out test set. CPU only, seconds.

    python benchmarks/bench_synthetic_difficulty.py
"""

from __future__ import annotations

import re

import pandas as pd

from finetune_predictor.data.synthetic_news import DIFFICULTIES, bayes_ceiling, iter_articles
from finetune_predictor.modeling.classical import classical_metrics
from finetune_predictor.tasks import build_task

KEYWORDS = re.compile(r"insiders|whispering|shared|anonymous")
TASK = build_task({"label_positive": "fake", "label_negative": "legitimate"})


def main() -> None:
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


if __name__ == "__main__":
    main()
