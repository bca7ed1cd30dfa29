"""Nodes of the data_engineering pipeline: thin wrappers over :mod:`finetune_predictor.data.task_data`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from finetune_predictor.data import task_data


def load_task_records(data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """All records of the task, the rejected ones, and what reading them found.

    The user's files are read here (not through the catalog) because their path, format and column
    mapping are parameters and every record is validated.
    """
    return task_data.load_task_records(data)


def load_task_records_after_preflight(data: dict[str, Any],
                                      preflight_passed: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``load_task_records``, ordered after the preflight gate (which raises before this when it fails)."""
    return task_data.load_task_records(data)


def split_train_test(records: pd.DataFrame, read_summary: dict[str, Any],
                     data: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A fixed balanced test set, then a balanced nested training subset disjoint from it."""
    return task_data.split_train_test(records, read_summary, data)
