"""Balanced, nested training subsets and one fixed held-out test set."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune_predictor.records import exact_text, normalised_text

DUPLICATE_POLICIES = ("drop", "keep", "error")
OVERLAP_POLICIES = ("drop", "error")


class InsufficientDataError(ValueError):
    """Fewer examples of a class than a balanced sample asks for."""


class DataLeakError(ValueError):
    """Test-set text that also appears in training (or a duplicate the policy refuses)."""


def deduplicate(frame: pd.DataFrame, policy: str = "drop") -> tuple[pd.DataFrame, dict[str, int]]:
    """Count exact and near duplicates (same normalised text) and drop all but the first, by policy.

    Exact = identical instruction and input; near = identical after lower-casing and removing
    punctuation and spacing. ``conflicting_labels`` counts texts seen with more than one label.
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"data.duplicates must be one of {DUPLICATE_POLICIES}, got {policy!r}")
    exact = pd.Series(list(map(exact_text, frame["instruction"], frame["input"])), index=frame.index)
    near = pd.Series(list(map(normalised_text, frame["instruction"], frame["input"])), index=frame.index)
    exact_dup = exact.duplicated()
    near_dup = near.duplicated()
    labels_per_text = frame.groupby(near.values)["output"].nunique()
    stats = {
        "exact_duplicates": int(exact_dup.sum()),
        "near_duplicates": int((near_dup & ~exact_dup).sum()),
        "conflicting_labels": int((labels_per_text > 1).sum()),
    }
    if policy == "error" and near_dup.any():
        first = frame.loc[near_dup].iloc[0]
        raise DataLeakError(f"{stats['exact_duplicates']} exact and {stats['near_duplicates']} near duplicate "
                            f"records (first: id {first['id']!r} from {first['source']}); data.duplicates=error")
    if policy == "drop":
        frame = frame.loc[~near_dup]
    stats["duplicates_removed"] = int(near_dup.sum()) if policy == "drop" else 0
    return frame, stats


def _class_order(frame: pd.DataFrame, label: str, seed: int) -> pd.DataFrame:
    subset = frame[frame["output"] == label]
    order = np.random.default_rng(seed).permutation(len(subset))
    return subset.iloc[order]


def _require(available: int, wanted: int, label: str, what: str) -> None:
    if available < wanted:
        raise InsufficientDataError(
            f"{what} asks for {wanted} examples of label {label!r} but only {available} exist"
        )


def select_test_set(frame: pd.DataFrame, labels: list[str], per_class: int | None, seed: int) -> pd.DataFrame:
    """A balanced test sample fixed by its own seed (independent of any training size).

    ``per_class=None`` keeps every record.
    """
    if per_class is None:
        return frame.reset_index(drop=True)
    parts = []
    for label in labels:
        ordered = _class_order(frame, label, seed)
        _require(len(ordered), per_class, label, "data.test_per_class")
        parts.append(ordered.head(per_class))
    return pd.concat(parts).reset_index(drop=True)


def remove_test_overlap(train_pool: pd.DataFrame, test: pd.DataFrame,
                        policy: str = "drop") -> tuple[pd.DataFrame, int]:
    """Keep test-set text out of the training candidates; return the pool and how many records went.

    ``policy="error"`` refuses a training file that contains test-set text (a leak) instead of
    removing it from the candidates.
    """
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"data.test_overlap must be one of {OVERLAP_POLICIES}, got {policy!r}")
    test_texts = set(map(normalised_text, test["instruction"], test["input"]))
    keep = [normalised_text(i, x) not in test_texts
            for i, x in zip(train_pool["instruction"], train_pool["input"], strict=True)]
    removed = int(len(keep) - sum(keep))
    if removed and policy == "error":
        leaked = train_pool[[not k for k in keep]].iloc[0]
        raise DataLeakError(f"{removed} training records repeat test-set text (first: id {leaked['id']!r} "
                            f"from {leaked['source']}); data.test_overlap=error")
    return train_pool[keep], removed


def assert_disjoint(train: pd.DataFrame, test: pd.DataFrame) -> None:
    """The invariant every split must keep: no test text (normalised) in training."""
    test_texts = set(map(normalised_text, test["instruction"], test["input"]))
    for row in train.itertuples(index=False):
        if normalised_text(row.instruction, row.input) in test_texts:
            raise DataLeakError(f"training record {row.id!r} from {row.source} repeats test-set text")


def nested_balanced_subset(pool: pd.DataFrame, labels: list[str], per_class: int, seed: int) -> pd.DataFrame:
    """The first ``per_class`` records of each class in a seed-fixed order, interleaved by a seeded shuffle.

    Because the class order does not depend on ``per_class``, a smaller subset is always contained in a
    larger one (nested subsets make a data-size curve honest).
    """
    parts = []
    for label in labels:
        ordered = _class_order(pool, label, seed)
        _require(len(ordered), per_class, label, f"a balanced training set of {per_class} per class")
        parts.append(ordered.head(per_class))
    subset = pd.concat(parts)
    shuffle = np.random.default_rng(seed + 1).permutation(len(subset))
    return subset.iloc[shuffle].reset_index(drop=True)
