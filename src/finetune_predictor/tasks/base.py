"""The task contract shared by data preparation, training, evaluation and probes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Task(Protocol):
    """A labelled task: what the model is asked, which answer is right, how to read and score answers."""

    name: str

    def target(self, record: dict[str, Any]) -> str:
        """The answer text the model is trained to produce for ``record``."""

    def candidates(self) -> list[str] | None:
        """The closed answer set scored by likelihood, or None for open-ended tasks."""

    def parse(self, generated: str) -> str | None:
        """The answer found in generated text, or None when it cannot be read unambiguously."""

    def metrics(self, y_true: Sequence[str], y_pred: Sequence[str | None],
                scores: np.ndarray | None = None) -> dict[str, Any]:
        """Metrics of predictions against references; None predictions are parse failures."""
