"""Tasks: a task owns its prompt, its answer parser and its metrics; pipelines only call these."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from finetune_predictor.tasks.base import Task
from finetune_predictor.tasks.binary_classification import BinaryClassificationTask
from finetune_predictor.tasks.multiclass_classification import MulticlassClassificationTask

TASK_TYPES: dict[str, type] = {"binary_classification": BinaryClassificationTask,
                               "multiclass_classification": MulticlassClassificationTask}


def build_task(data_params: dict[str, Any], seen_labels: Iterable[str] | None = None) -> Task:
    """Build the task named by ``data.task`` from the data parameters. ``seen_labels`` (the records'
    outputs) give a multi-class task its labels when ``data.labels`` does not."""
    task_type = data_params.get("task", "binary_classification")
    if task_type not in TASK_TYPES:
        raise ValueError(f"data.task={task_type!r} is unknown; choose one of {sorted(TASK_TYPES)}")
    if task_type == "multiclass_classification":
        return MulticlassClassificationTask.from_params(data_params, seen_labels)
    return TASK_TYPES[task_type].from_params(data_params)


def declared_labels(data_params: dict[str, Any]) -> list[str] | None:
    """The labels the parameters name (to validate records as they are read), or None when a multi-class
    task takes its labels from the data."""
    if data_params.get("task", "binary_classification") == "multiclass_classification":
        return list(data_params["labels"]) if data_params.get("labels") else None
    return build_task(data_params).candidates()


__all__ = ["TASK_TYPES", "BinaryClassificationTask", "MulticlassClassificationTask", "Task", "build_task",
           "declared_labels"]
