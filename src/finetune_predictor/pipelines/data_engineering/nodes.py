"""Nodes of the data_engineering pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from finetune_predictor.records import CANONICAL_COLUMNS, ReadResult, SourceSpec, content_sha256, read_records
from finetune_predictor.splits import (
    assert_disjoint,
    deduplicate,
    nested_balanced_subset,
    remove_test_overlap,
    select_test_set,
)
from finetune_predictor.synthetic_news import iter_articles
from finetune_predictor.tasks import build_task

_ORIGIN = "origin"  # "pool" (training candidates) or "test_file" (the user's fixed test file)
BUNDLED_SOURCE = "bundled-synthetic-news"
REJECT_COLUMNS = ["file", "location", "reason", "raw"]


def _read(data: dict[str, Any], path: str, labels: list[str]) -> ReadResult:
    return read_records(SourceSpec.from_params(data, path), labels, str(data.get("on_invalid", "error")))


def load_task_records(data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """All records of the task in the canonical table, the rejected ones, and what reading them found.

    ``data.path`` null means the bundled generated task. The user's files are read here (not through
    the catalog) because their path, format and column mapping are parameters and every record is
    validated; rejects (``data.on_invalid: quarantine``) are returned, never dropped silently.
    """
    labels = build_task(data).candidates()
    results: dict[str, ReadResult] = {}
    if data.get("path"):
        results["train_file"] = _read(data, data["path"], labels)
        pool = results["train_file"].records.copy()
    else:
        synthetic = data.get("synthetic", {})
        pool = pd.DataFrame(iter_articles(int(synthetic.get("num_records", 24000)), int(synthetic.get("seed", 7))))
        pool["source"] = BUNDLED_SOURCE
        pool["group"] = BUNDLED_SOURCE
        pool = pool[CANONICAL_COLUMNS]
    pool[_ORIGIN] = "pool"
    frames = [pool]
    if data.get("test_path"):
        results["test_file"] = _read(data, data["test_path"], labels)
        test = results["test_file"].records.copy()
        test[_ORIGIN] = "test_file"
        frames.append(test)
    rejects = [reject for result in results.values() for reject in result.rejects]
    summary = {name: result.summary() for name, result in results.items()}
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rejects, columns=REJECT_COLUMNS), summary


def load_task_records_after_preflight(data: dict[str, Any],
                                      preflight_passed: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``load_task_records``, ordered after the preflight gate (which raises before this when it fails)."""
    return load_task_records(data)


def split_train_test(records: pd.DataFrame, read_summary: dict[str, Any],
                     data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A fixed balanced test set, then a balanced training subset disjoint from it.

    Duplicates are counted and handled by ``data.duplicates`` within each source. The test set depends
    only on the records and ``data.seed``, never on the training size; training subsets are nested (a
    larger one contains the smaller ones) and never share text with the test set.
    """
    labels = build_task(data).candidates()
    seed = int(data.get("seed", 42))
    policy = str(data.get("duplicates", "drop"))
    test_per_class = data.get("test_per_class")
    pool_all, pool_dups = deduplicate(records[records[_ORIGIN] == "pool"], policy)
    duplicates = {"pool": pool_dups}
    if (records[_ORIGIN] == "test_file").any():
        test_file, duplicates["test_file"] = deduplicate(records[records[_ORIGIN] == "test_file"], policy)
        test = select_test_set(test_file, labels, test_per_class, seed)
        pool = pool_all
    else:
        test = select_test_set(pool_all, labels, test_per_class, seed)
        pool = pool_all[~pool_all["id"].isin(set(test["id"]))]
    pool, overlap_removed = remove_test_overlap(pool, test, str(data.get("test_overlap", "drop")))
    train = nested_balanced_subset(pool, labels, int(data["train_per_class"]), seed)
    train, test = train[CANONICAL_COLUMNS], test[CANONICAL_COLUMNS]
    assert_disjoint(train, test)
    summary = {
        "source": str(data.get("path") or BUNDLED_SOURCE),
        "test_source": str(data.get("test_path") or "held-out split of the training source"),
        "read": read_summary,
        "records_available": int((records[_ORIGIN] == "pool").sum()),
        "duplicates": duplicates,
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
