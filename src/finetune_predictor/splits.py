"""Balanced, nested training subsets and one fixed held-out test set."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune_predictor.records import normalised_text


class InsufficientDataError(ValueError):
    """Fewer examples of a class than a balanced sample asks for."""


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


def remove_test_overlap(train_pool: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop training records whose normalised text appears in the test set; return how many went."""
    test_texts = set(map(normalised_text, test["instruction"], test["input"]))
    keep = [normalised_text(i, x) not in test_texts for i, x in zip(train_pool["instruction"], train_pool["input"],
                                                                   strict=True)]
    return train_pool[keep], int(len(keep) - sum(keep))


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
