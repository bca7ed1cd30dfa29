"""The predictor's cross-validation splits, each scored on its own: ``random`` (K folds grouped by
``replicate_key``, so a seed twin never straddles a fold), one leave-one-group-out split per group column
(``grouped_dataset_family``, ``grouped_source_corpus``, ``grouped_model``, ``grouped_task``; a column that groups
the runs as an earlier one does is not scored twice) and ``forward_size`` (the next training size from the smaller
ones); and the folds conformal intervals are calibrated on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from finetune_predictor.prediction.model_selection import GroupsOf, grouped_folds

if TYPE_CHECKING:
    from finetune_predictor.prediction.predictor import PredictorSettings


def split_indices(table: pd.DataFrame, settings: PredictorSettings) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Each split scored on its own: ``random`` (K folds that keep seed replicates together, so a run's
    twin with another seed never sits in the training fold) and ``grouped_<column>`` (leave one group out)
    for each group column with at least two groups."""
    from sklearn.model_selection import LeaveOneGroupOut

    random_folds = replicate_folds(table, settings.n_folds, settings.seed)
    splits = {"random": random_folds} if random_folds else {}
    partitions: list[np.ndarray] = []
    for column in settings.group_columns:
        if column in table and table[column].nunique() >= 2:
            groups = table[column].astype(str).to_numpy()
            codes = pd.factorize(groups)[0]  # equal codes: the same partition of the runs (same first-seen order)
            if any(np.array_equal(codes, seen) for seen in partitions):
                continue  # e.g. source_corpus where no two families share a corpus: the family split again
            partitions.append(codes)
            splits[f"grouped_{column}"] = list(LeaveOneGroupOut().split(table, groups=groups))
    forward = forward_size_folds(table)
    if forward:
        splits[FORWARD_SPLIT] = forward
    return splits


FORWARD_SPLIT = "forward_size"
SIZE_COLUMN = "param_train_size"


def forward_size_folds(table: pd.DataFrame, min_train: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """Forward in size, rolling origin: for each training size, fit on every run of a smaller size and predict
    the runs of that size (what a sweep's large sizes look like from its small ones). Seed twins share their size,
    so they are always held out together; a size with fewer than ``min_train`` smaller runs is not scored."""
    if SIZE_COLUMN not in table:
        return []
    sizes = pd.to_numeric(table[SIZE_COLUMN], errors="coerce").to_numpy(dtype=float)
    folds = []
    for size in np.unique(sizes[np.isfinite(sizes)])[1:]:
        train, test = np.flatnonzero(sizes < size), np.flatnonzero(sizes == size)
        if len(train) >= min_train:
            folds.append((train, test))
    return folds


def _replicate_groups(table: pd.DataFrame) -> np.ndarray:
    """Seed replicates share a group; a table without ``replicate_key`` makes each run its own group."""
    if "replicate_key" in table:
        own_key = pd.Series(table.index.astype(str), index=table.index)
        return table["replicate_key"].fillna(own_key).astype(str).to_numpy()
    return np.arange(len(table)).astype(str)


def replicate_folds(table: pd.DataFrame, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled K folds grouped by ``replicate_key`` (none for a single configuration: the conformal width
    is then infinite)."""
    return grouped_folds(table, _replicate_groups(table), n_folds, seed)


def calibration_folds(table: pd.DataFrame, settings: PredictorSettings, column: str | None,
                      new_group: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave one group of ``column`` out when a new group is the question and the table has two; else
    folds by replicate key (the width for a configuration of a known group)."""
    from sklearn.model_selection import LeaveOneGroupOut

    if new_group and column and column in table and table[column].nunique() >= 2:
        return list(LeaveOneGroupOut().split(table, groups=table[column].astype(str).to_numpy()))
    return replicate_folds(table, settings.n_folds, settings.seed)


def groups_of_table(table: pd.DataFrame) -> GroupsOf:
    """Replicate groups looked up by row label (the models' inner folds keep seed twins together)."""
    groups = pd.Series(_replicate_groups(table), index=table.index)
    return lambda index: groups.loc[index].to_numpy()
