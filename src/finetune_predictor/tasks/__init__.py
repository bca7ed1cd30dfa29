"""Tasks: a task owns its prompt, its answer parser and its metrics; pipelines only call these."""

from __future__ import annotations

from typing import Any

from finetune_predictor.tasks.base import Task
from finetune_predictor.tasks.binary_classification import BinaryClassificationTask

TASK_TYPES: dict[str, type] = {"binary_classification": BinaryClassificationTask}


def build_task(data_params: dict[str, Any]) -> Task:
    """Build the task named by ``data.task`` from the data parameters."""
    task_type = data_params.get("task", "binary_classification")
    if task_type not in TASK_TYPES:
        raise ValueError(f"data.task={task_type!r} is unknown; choose one of {sorted(TASK_TYPES)}")
    return TASK_TYPES[task_type].from_params(data_params)


__all__ = ["TASK_TYPES", "BinaryClassificationTask", "Task", "build_task"]
