"""Nodes of the data_engineering pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from finetune_predictor.records import CANONICAL_COLUMNS, content_sha256, read_alpaca_records
from finetune_predictor.splits import nested_balanced_subset, remove_test_overlap, select_test_set
from finetune_predictor.synthetic_news import iter_articles
from finetune_predictor.tasks import build_task

_ORIGIN = "origin"  # "pool" (training candidates) or "test_file" (the user's fixed test file)


def load_task_records(data: dict[str, Any]) -> pd.DataFrame:
    """All records of the task in the canonical table, tagged with where they may be used.

    ``data.path`` null means the bundled generated task. The user's files are read here (not through
    the catalog) because their path and format are parameters and every line is validated.
    """
    task = build_task(data)
    labels = task.candidates()
    if data.get("path"):
        pool = read_alpaca_records(data["path"], labels=labels)
    else:
        synthetic = data.get("synthetic", {})
        pool = pd.DataFrame(iter_articles(int(synthetic.get("num_records", 24000)), int(synthetic.get("seed", 7))))
        pool["source"] = "bundled-synthetic-news"
        pool = pool[CANONICAL_COLUMNS]
    pool[_ORIGIN] = "pool"
    frames = [pool]
    if data.get("test_path"):
        test = read_alpaca_records(data["test_path"], labels=labels)
        test[_ORIGIN] = "test_file"
        frames.append(test)
    return pd.concat(frames, ignore_index=True)


def split_train_test(records: pd.DataFrame, data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A fixed balanced test set, then a balanced training subset disjoint from it.

    The test set depends only on the records and ``data.seed``, never on the training size; training
    subsets are nested (a larger one contains the smaller ones).
    """
    labels = build_task(data).candidates()
    seed = int(data.get("seed", 42))
    test_per_class = data.get("test_per_class")
    has_test_file = (records[_ORIGIN] == "test_file").any()
    if has_test_file:
        test = select_test_set(records[records[_ORIGIN] == "test_file"], labels, test_per_class, seed)
        pool = records[records[_ORIGIN] == "pool"]
    else:
        pool_all = records[records[_ORIGIN] == "pool"]
        test = select_test_set(pool_all, labels, test_per_class, seed)
        pool = pool_all[~pool_all["id"].isin(set(test["id"]))]
    pool, overlap_removed = remove_test_overlap(pool, test)
    train = nested_balanced_subset(pool, labels, int(data["train_per_class"]), seed)
    train, test = train[CANONICAL_COLUMNS], test[CANONICAL_COLUMNS]
    summary = {
        "source": str(data.get("path") or "bundled-synthetic-news"),
        "test_source": str(data.get("test_path") or "held-out split of the training source"),
        "records_available": int((records[_ORIGIN] == "pool").sum()),
        "train_size": len(train),
        "train_per_class": int(data["train_per_class"]),
        "test_size": len(test),
        "train_label_counts": {k: int(v) for k, v in train["output"].value_counts().items()},
        "test_label_counts": {k: int(v) for k, v in test["output"].value_counts().items()},
        "train_test_overlap_removed": overlap_removed,
        "train_sha256": content_sha256(train),
        "test_sha256": content_sha256(test),
    }
    return train, test, summary
