"""Binary classification (MegaFake task 1: fake vs legitimate news) as a pluggable task."""

from __future__ import annotations

import re
from collections.abc import Sequence
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

# Words that, right before a label, reverse or deny it ("not fake", "isn't real", "never legitimate").
_NEGATIONS = {"not", "no", "never", "isn't", "isnt", "aren't", "arent", "wasn't", "wasnt", "hardly",
              "neither", "nor", "non", "un"}
# Prefixes a model may write in front of the bare answer.
_ANSWER_PREFIX = re.compile(
    r"^(?:answer:|label:|classification:|prediction:|the answer is\b|this is\b|this article is\b|"
    r"the article is\b|it is\b)\s*"
)
_WORD = re.compile(r"[a-z][a-z'\-]*")


@dataclass(frozen=True)
class BinaryClassificationTask:
    """Two labels; ``positive_label`` is the class whose probability feeds AUC."""

    positive_label: str
    negative_label: str
    name: str = "binary_classification"
    primary_metric: ClassVar[str] = "accuracy"  # logged as baseline_primary / finetuned_primary
    # None: the budget is derived from the labels (the longest label's tokens + end-of-turn, see
    # evaluation.max_new_tokens), so generation never runs past the longest answer it could give.
    max_new_tokens: ClassVar[int | None] = None
    feature_names: ClassVar[tuple[str, ...]] = CLASSIFICATION_FEATURES  # what features() returns

    def __post_init__(self) -> None:
        for label in (self.positive_label, self.negative_label):
            if not label or not label.strip():
                raise ValueError("data.label_positive and data.label_negative must be non-empty strings")
        if _normalise(self.positive_label) == _normalise(self.negative_label):
            raise ValueError(f"The two labels must differ, got {self.positive_label!r} twice")

    @classmethod
    def from_params(cls, data_params: dict[str, Any]) -> BinaryClassificationTask:
        return cls(str(data_params["label_positive"]), str(data_params["label_negative"]))

    @property
    def labels(self) -> list[str]:
        return [self.positive_label, self.negative_label]

    def target(self, record: dict[str, Any]) -> str:
        return str(record["output"])

    def candidates(self) -> list[str]:
        return self.labels

    def parse(self, generated: str) -> str | None:
        """Read a label strictly: an exact answer, or exactly one label named without negation.

        A negated label ("not fake", "untrue") is never flipped into the other label, and text naming
        both labels or neither is a parse failure (None), counted rather than guessed.
        """
        text = _normalise(generated)
        text = _normalise(_ANSWER_PREFIX.sub("", text))
        by_norm = {_normalise(label): label for label in self.labels}
        if text in by_norm:
            return by_norm[text]
        words = _WORD.findall(text)
        found: set[str] = set()
        for norm, label in by_norm.items():
            label_words = norm.split()
            width = len(label_words)
            for start in range(len(words) - width + 1):
                if words[start:start + width] != label_words:
                    continue
                before = words[max(0, start - 3):start]
                if any(word in _NEGATIONS for word in before):
                    return None
                found.add(label)
        return found.pop() if len(found) == 1 else None

    def metrics(self, y_true: Sequence[str], y_pred: Sequence[str | None],
                scores: np.ndarray | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class P/R/F1, confusion matrix, parse failures and (with scores) AUC.

        A parse failure counts as wrong for accuracy and F1; ``scores`` are P(positive). Per-class figures
        are also named by role (``f1_positive``, ``f1_negative``), whatever the label words.
        """
        from sklearn.metrics import roc_auc_score

        result = classification_metrics(self.labels, y_true, y_pred, label_roles(self.labels, self.positive_label))
        if scores is not None:
            truth = np.array([t == self.positive_label for t in y_true], dtype=int)
            result["auc"] = float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else float("nan")
        return result

    def corrupt(self, targets: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
        """Label noise: a share ``rate`` of the labels replaced by another label."""
        return corrupt_labels(self.candidates(), targets, rate, rng)

    def features(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Label balance and label learnability (:func:`classification_features`)."""
        return classification_features([self.target(record) for record in records], records)
