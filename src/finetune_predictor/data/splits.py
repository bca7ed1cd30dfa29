"""Balanced, nested training subsets and one fixed held-out test set."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune_predictor.data.records import exact_text, normalised_text
from finetune_predictor.errors import UserFacingError
from finetune_predictor.settings_schema import SettingsError

DUPLICATE_POLICIES = ("drop", "keep", "error")
OVERLAP_POLICIES = ("drop", "error")


class InsufficientDataError(ValueError, UserFacingError):
    """Fewer examples of a class than a balanced sample asks for. ``cause`` says what took records away on
    the way (duplicates dropped, records set aside for the test set or removed for repeating its text)."""

    def __init__(self, message: str, cause: str = "", setting: str = "data.train_per_class") -> None:
        what = f"{message}{f' ({cause})' if cause else ''}"
        UserFacingError.__init__(self, what, setting,
                                 "lower data.train_per_class / data.test_per_class, or give data.path more "
                                 "distinct records of each class")
        self.message, self.cause, self.setting = message, cause, setting

    def because(self, cause: str) -> InsufficientDataError:
        """The same shortage with what caused it."""
        return InsufficientDataError(self.message, cause, self.setting)


class DataLeakError(ValueError, UserFacingError):
    """Test-set text that also appears in training (or a duplicate the policy refuses)."""

    def __init__(self, message: str, fix: str) -> None:
        UserFacingError.__init__(self, message, fix=fix)


def deduplicate(frame: pd.DataFrame, policy: str = "drop") -> tuple[pd.DataFrame, dict[str, int]]:
    """Count exact and near duplicates (same normalised text) and drop all but the first, by policy.

    Exact = identical instruction and input; near = identical after lower-casing and removing
    punctuation and spacing. ``conflicting_labels`` counts texts seen with more than one label.
    """
    if policy not in DUPLICATE_POLICIES:
        raise SettingsError([("data.duplicates",
                              f"data.duplicates must be one of {DUPLICATE_POLICIES}, got {policy!r}")])
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
                            f"records (first: id {first['id']!r} from {first['source']}); data.duplicates=error",
                            "remove the duplicates from the file, or set data.duplicates=drop (keeps the first)")
    if policy == "drop":
        frame = frame.loc[~near_dup]
    stats["duplicates_removed"] = int(near_dup.sum()) if policy == "drop" else 0
    return frame, stats


def _class_order(frame: pd.DataFrame, label: str | None, seed: int) -> pd.DataFrame:
    """The records of one class (every record for ``label=None``: open tasks have one stratum) in a
    seed-fixed order."""
    subset = frame if label is None else frame[frame["output"] == label]
    order = np.random.default_rng(seed).permutation(len(subset))
    return subset.iloc[order]


def strata(labels: list[str] | None) -> list[str | None]:
    """What balanced sampling balances over: the labels of a classification task, else one stratum (so
    ``train_per_class`` is the number of examples of a QA or structured task)."""
    return list(labels) if labels else [None]


def _require(available: int, wanted: int, label: str | None, what: str, setting: str = "data.train_per_class") -> None:
    if available < wanted:
        of = f"of label {label!r} " if label is not None else ""
        raise InsufficientDataError(f"{what} asks for {wanted} examples {of}but only {available} exist",
                                    setting=setting)


def select_test_groups(frame: pd.DataFrame, size: int | None, seed: int,
                       fraction: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A test sample drawn from whole groups (SQuAD articles), and the records of every other group.

    Groups are taken in a seed-fixed order until they hold ``size`` records (``None``: a ``fraction`` of
    all records, every record of the chosen groups kept); the test sample is ``size`` of their records. The
    records of a chosen group that are not sampled are left out of training too, so no group (no passage)
    is shared by the two sides.
    """
    groups = frame["group"].drop_duplicates().tolist()
    if len(groups) < 2:
        raise InsufficientDataError(f"a test split by group needs at least two groups, the data has {len(groups)} "
                                    f"({groups}); set data.test_split=record or give a data.test_path",
                                    setting="data.test_split")
    wanted = size if size is not None else max(1, round(len(frame) * fraction))
    counts = frame["group"].value_counts()
    chosen: list[str] = []
    for index in np.random.default_rng(seed).permutation(len(groups)):
        if sum(counts[g] for g in chosen) >= wanted:
            break
        chosen.append(groups[index])
    if len(chosen) == len(groups):
        raise InsufficientDataError(f"data.test_per_class={size} needs every group of the data for the test set; "
                                    "lower it so that some groups remain for training", setting="data.test_per_class")
    in_test = frame["group"].isin(chosen)
    test = _class_order(frame[in_test], None, seed)
    return (test.head(size) if size is not None else test).reset_index(drop=True), frame[~in_test]


def select_test_set(frame: pd.DataFrame, labels: list[str] | None, per_class: int | None, seed: int) -> pd.DataFrame:
    """A balanced test sample fixed by its own seed (independent of any training size).

    ``per_class=None`` keeps every record.
    """
    if per_class is None:
        return frame.reset_index(drop=True)
    parts = []
    for label in strata(labels):
        ordered = _class_order(frame, label, seed)
        _require(len(ordered), per_class, label, "data.test_per_class", "data.test_per_class")
        parts.append(ordered.head(per_class))
    return pd.concat(parts).reset_index(drop=True)


def remove_test_overlap(train_pool: pd.DataFrame, test: pd.DataFrame,
                        policy: str = "drop") -> tuple[pd.DataFrame, int]:
    """Keep test-set text out of the training candidates; return the pool and how many records went.

    ``policy="error"`` refuses a training file that contains test-set text (a leak) instead of
    removing it from the candidates.
    """
    if policy not in OVERLAP_POLICIES:
        raise SettingsError([("data.test_overlap",
                              f"data.test_overlap must be one of {OVERLAP_POLICIES}, got {policy!r}")])
    test_texts = set(map(normalised_text, test["instruction"], test["input"]))
    keep = [normalised_text(i, x) not in test_texts
            for i, x in zip(train_pool["instruction"], train_pool["input"], strict=True)]
    removed = int(len(keep) - sum(keep))
    if removed and policy == "error":
        leaked = train_pool[[not k for k in keep]].iloc[0]
        raise DataLeakError(f"{removed} training records repeat test-set text (first: id {leaked['id']!r} "
                            f"from {leaked['source']}); data.test_overlap=error",
                            "remove them from the training file, or set data.test_overlap=drop")
    return train_pool[keep], removed


def assert_disjoint(train: pd.DataFrame, test: pd.DataFrame) -> None:
    """The invariant every split must keep: no test text (normalised) in training. Overlap is removed (or
    refused) before, so a violation is a bug of the split, reported with its traceback (not a user error)."""
    test_texts = set(map(normalised_text, test["instruction"], test["input"]))
    for row in train.itertuples(index=False):
        if normalised_text(row.instruction, row.input) in test_texts:
            raise RuntimeError(f"training record {row.id!r} from {row.source} repeats test-set text")


def nested_balanced_subset(pool: pd.DataFrame, labels: list[str] | None, per_class: int, seed: int) -> pd.DataFrame:
    """The first ``per_class`` records of each class in a seed-fixed order, interleaved by a seeded shuffle.

    Because the class order does not depend on ``per_class``, a smaller subset is always contained in a
    larger one (nested subsets make a data-size curve honest).
    """
    parts = []
    for label in strata(labels):
        ordered = _class_order(pool, label, seed)
        _require(len(ordered), per_class, label, f"a balanced training set of {per_class} per class")
        parts.append(ordered.head(per_class))
    subset = pd.concat(parts)
    shuffle = np.random.default_rng(seed + 1).permutation(len(subset))
    return subset.iloc[shuffle].reset_index(drop=True)
