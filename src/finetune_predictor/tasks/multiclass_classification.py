"""Multi-class classification (LIAR's six-way truthfulness, the type of fake): N labels, scored by likelihood
over all candidates on the prompt's cache, read strictly from generated text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from finetune_predictor.tasks.base import (
    CLASSIFICATION_FEATURES,
    classification_features,
    classification_metrics,
    corrupt_labels,
    label_roles,
)
from finetune_predictor.tasks.base import normalise_answer as _normalise

_PREFIX = re.compile(r"^(?:answer:|label:|class:|classification:|prediction:|the answer is\b|it is\b)\s*")


@dataclass(frozen=True)
class MulticlassClassificationTask:
    """Labels in a fixed order: ``data.labels``, or the sorted labels found in the records."""

    labels: tuple[str, ...]
    name: str = "multiclass_classification"
    positive_label: str | None = None
    primary_metric: ClassVar[str] = "accuracy"  # logged as baseline_primary / finetuned_primary
    # None: the budget is derived from the labels (the longest label's tokens + end-of-turn, see
    # evaluation.max_new_tokens), so generation never runs past the longest answer it could give.
    max_new_tokens: ClassVar[int | None] = None
    feature_names: ClassVar[tuple[str, ...]] = CLASSIFICATION_FEATURES  # what features() returns

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ValueError(f"data.task=multiclass_classification needs at least two labels, got {list(self.labels)}")
        if len({_normalise(label) for label in self.labels}) != len(self.labels):
            raise ValueError(f"data.labels {list(self.labels)} contains labels that differ only in case or spacing")

    @classmethod
    def from_params(cls, data_params: dict[str, Any], seen_labels: Iterable[str] | None = None
                    ) -> MulticlassClassificationTask:
        labels = data_params.get("labels") or (sorted({str(label) for label in seen_labels}) if seen_labels is not None
                                              else None)
        if not labels:
            raise ValueError("data.task=multiclass_classification needs data.labels (a list) or records to take "
                             "the labels from")
        return cls(tuple(str(label) for label in labels))

    def target(self, record: dict[str, Any]) -> str:
        return str(record["output"])

    def candidates(self) -> list[str]:
        return list(self.labels)

    def parse(self, generated: str) -> str | None:
        """An exact label, else exactly one label named as a whole word (``half-true`` is never read as
        ``true``); anything else is a parse failure, counted and never guessed."""
        text = _normalise(_PREFIX.sub("", _normalise(generated)))
        by_norm = {_normalise(label): label for label in self.labels}
        if text in by_norm:
            return by_norm[text]
        found = {label for norm, label in by_norm.items()
                 if re.search(rf"(?<![\w-]){re.escape(norm)}(?![\w-])", text)}
        return found.pop() if len(found) == 1 else None

    def metrics(self, y_true: Sequence[str], y_pred: Sequence[str | None],
                scores: np.ndarray | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class P/R/F1, confusion matrix, parse failures and, with ``scores`` (one
        probability column per label), the one-vs-rest macro AUC. Per-class figures are also named
        ``..._class<i>`` by the label's place in sorted order (``tasks.base.label_roles``)."""
        from sklearn.metrics import roc_auc_score

        result = classification_metrics(self.labels, y_true, y_pred, label_roles(self.labels))
        if scores is not None and np.asarray(scores).ndim == 2:
            present = set(y_true)
            result["auc"] = (float(roc_auc_score(list(y_true), np.asarray(scores), multi_class="ovr", average="macro",
                                                 labels=list(self.labels)))
                             if present == set(self.labels) else float("nan"))
        return result

    def corrupt(self, targets: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
        """Label noise: a share ``rate`` of the labels replaced by another label."""
        return corrupt_labels(self.candidates(), targets, rate, rng)

    def features(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Label balance and label learnability (:func:`classification_features`)."""
        return classification_features([self.target(record) for record in records], records)
