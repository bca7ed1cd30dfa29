"""Tasks: a task owns its prompt target, its answer parser and its metrics; pipelines only call these.

``data.task`` names one of :data:`TASK_TYPES`. Classification tasks have a closed label set scored by
likelihood; ``qa`` and ``structured`` are open tasks judged on greedy generation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from finetune_predictor.tasks.base import Task
from finetune_predictor.tasks.binary_classification import BinaryClassificationTask
from finetune_predictor.tasks.multiclass_classification import MulticlassClassificationTask
from finetune_predictor.tasks.qa import QATask
from finetune_predictor.tasks.structured import StructuredTask

TASK_TYPES: dict[str, type] = {"binary_classification": BinaryClassificationTask,
                               "multiclass_classification": MulticlassClassificationTask,
                               "qa": QATask, "structured": StructuredTask}
DEFAULT_TASK = "binary_classification"
OPEN_TASKS = frozenset({"qa", "structured"})  # no closed label set: judged on generation


def task_type(data_params: dict[str, Any]) -> str:
    """``data.task``, checked against the known task types."""
    name = str(data_params.get("task") or DEFAULT_TASK)
    if name not in TASK_TYPES:
        raise ValueError(f"data.task={name!r} is unknown; choose one of {sorted(TASK_TYPES)}")
    return name


def build_task(data_params: dict[str, Any], seen_targets: Iterable[str] | None = None) -> Task:
    """Build the task named by ``data.task`` from the data parameters. ``seen_targets`` (the records'
    outputs) give a multi-class task its labels when ``data.labels`` does not, and a structured task its
    schema when ``data.schema`` does not."""
    name = task_type(data_params)
    if name in ("multiclass_classification", "structured"):
        return TASK_TYPES[name].from_params(data_params, seen_targets)
    return TASK_TYPES[name].from_params(data_params)


def declared_labels(data_params: dict[str, Any]) -> list[str] | None:
    """The labels the parameters name (to validate records as they are read), or None when a multi-class
    task takes its labels from the data or the task has no closed label set."""
    name = task_type(data_params)
    if name == "multiclass_classification":
        return list(data_params["labels"]) if data_params.get("labels") else None
    if name in OPEN_TASKS:
        return None
    return build_task(data_params).candidates()


def is_open(task: Task) -> bool:
    """An open task (no closed label set) is judged on generation only."""
    return not task.candidates()


def test_split(task: Task, data_params: dict[str, Any]) -> str:
    """``data.test_split`` (record | group); ``auto`` takes the task's default (group for QA: by article)."""
    value = str(data_params.get("test_split") or "auto")
    if value == "auto":
        return getattr(task, "default_test_split", "record")
    if value not in ("record", "group"):
        raise ValueError(f"data.test_split must be auto, record or group, got {value!r}")
    return value


__all__ = ["DEFAULT_TASK", "OPEN_TASKS", "TASK_TYPES", "BinaryClassificationTask", "MulticlassClassificationTask",
           "QATask", "StructuredTask", "Task", "build_task", "declared_labels", "is_open", "task_type", "test_split"]
