"""The task contract shared by data preparation, training, evaluation and probes."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from finetune_predictor.modeling.classical import label_learnability


class Task(Protocol):
    """A task: what the model is asked, which answer is right, how to read and score answers.

    Classification tasks have a closed answer set (``candidates``) scored by likelihood; open tasks (QA,
    structured answers) return None there and are judged on greedy generation through ``parse``.
    """

    name: str
    positive_label: str | None  # the class whose probability feeds a binary AUC; None for other tasks
    primary_metric: str  # the one figure per task that reports and the predictor use by default
    # The generation budget when evaluation.max_new_tokens is null; None = derived from the candidates
    # (the longest label's tokens + end-of-turn).
    max_new_tokens: int | None
    feature_names: tuple[str, ...]  # the task-specific meta-features ``features`` returns

    def target(self, record: dict[str, Any]) -> str:
        """The answer text the model is trained to produce for ``record``."""

    def candidates(self) -> list[str] | None:
        """The closed answer set scored by likelihood, or None for open-ended tasks."""

    def parse(self, generated: str) -> str | None:
        """The answer found in generated text, or None when it cannot be read unambiguously."""

    def metrics(self, y_true: Sequence[Any], y_pred: Sequence[str | None],
                scores: np.ndarray | None = None) -> dict[str, Any]:
        """Metrics of predictions against references (a list of accepted answers per record where the task
        has several); None predictions are parse failures."""

    def corrupt(self, targets: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
        """The training targets with a share ``rate`` of them corrupted (the sweep's noise variant): labels
        flipped, answers shuffled between questions, fields dropped or swapped."""

    def features(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Task-specific meta-features of training records (``mf_`` names), where they mean something."""


def normalise_answer(text: str) -> str:
    """Generated text or a label as the parsers compare it: lower case, stray special tokens and outer
    punctuation removed, whitespace collapsed."""
    text = re.sub(r"<\|[^|>]*\|>|</?s>", " ", text.strip().lower())
    return re.sub(r"\s+", " ", text).strip(" \t\n\"'`*.,!:;()[]")


def label_key(label: str) -> str:
    """A label as a metric-name fragment: ``half-true`` -> ``half_true``."""
    return re.sub(r"\W+", "_", label.lower()).strip("_")


def label_roles(labels: Sequence[str], positive: str | None = None) -> dict[str, str]:
    """Label-agnostic names for per-class metrics, so runs on datasets with other label words line up in
    one column: ``positive`` / ``negative`` for a binary task (by ``data.label_positive``), ``class<i>`` for
    the i-th label in sorted order otherwise (sorted, so that the order ``data.labels`` lists them in does
    not change the names). A label literally named like another label's role loses that name to the role."""
    if positive is not None and len(labels) == 2 and positive in labels:
        return {label: "positive" if label == positive else "negative" for label in labels}
    return {label: f"class{index}" for index, label in enumerate(sorted(labels))}


def classification_metrics(labels: Sequence[str], y_true: Sequence[str],
                           y_pred: Sequence[str | None], roles: dict[str, str] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix and parse failures, for
    any number of labels; a parse failure (None) counts as wrong. Per-class figures are named by the label
    (``f1_fake``) and, with ``roles`` (:func:`label_roles`), also by its role (``f1_positive``)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} references but {len(y_pred)} predictions")
    if not len(y_true):
        raise ValueError("No examples to score")
    labels = list(labels)
    pred = [p if p is not None else "<unparsed>" for p in y_pred]
    true = list(y_true)
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    result: dict[str, Any] = {
        "n": len(true),
        "accuracy": float(np.mean([t == p for t, p in zip(true, pred, strict=True)])),
        "f1_macro": float(np.mean(f1)),
        "parse_failures": int(sum(p is None for p in y_pred)),
        "parse_failure_rate": float(np.mean([p is None for p in y_pred])),
        "confusion_matrix": confusion_matrix(true, pred, labels=labels).tolist(),
        "confusion_labels": labels,
    }
    for index, label in enumerate(labels):
        key = label_key(label)
        result[f"precision_{key}"] = float(precision[index])
        result[f"recall_{key}"] = float(recall[index])
        result[f"f1_{key}"] = float(f1[index])
        result[f"support_{key}"] = int(support[index])
    for index, label in enumerate(labels):
        if roles and label in roles:
            result.update({f"precision_{roles[label]}": float(precision[index]),
                           f"recall_{roles[label]}": float(recall[index]), f"f1_{roles[label]}": float(f1[index]),
                           f"support_{roles[label]}": int(support[index])})
    return result


def corrupt_labels(labels: Sequence[str], targets: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
    """A share ``rate`` of the targets replaced by another label, drawn uniformly (the two-label case flips)."""
    out = list(targets)
    for index in rng.choice(len(out), size=round(len(out) * rate), replace=False):
        out[index] = str(rng.choice([label for label in labels if label != out[index]]))
    return out


CLASSIFICATION_FEATURES = ("mf_label_balance", "mf_label_cv_balanced_accuracy")
# The meta-feature that ranks candidate training sets of one classification task with no fitting (higher is
# better): what the candidate study scores as its no-fitting ranking and rank_datasets shows beside the
# predictor's. Added after the first candidate study's ranking missed label noise, scored once against it, not
# tuned (docs/predictor.md, "Ranking candidates").
RANKING_PRIOR_FEATURE = "mf_label_cv_balanced_accuracy"


def classification_features(targets: Sequence[str], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """A classification training set's own meta-features: label balance (normalised entropy of its labels) and
    label learnability (the classical classifier's cross-validated balanced accuracy on it, which falls with
    label noise and with a harder source: :func:`finetune_predictor.modeling.classical.label_learnability`)."""

    return {"mf_label_balance": label_balance(targets),
            "mf_label_cv_balanced_accuracy": label_learnability(list(records), list(targets))}


def label_balance(labels: Sequence[str]) -> float:
    """Normalised entropy of the label distribution: 1 = balanced, 0 = one class."""
    counts = np.array(list(Counter(labels).values()), dtype=float)
    if len(counts) < 2:
        return 0.0
    shares = counts / counts.sum()
    return float(-(shares * np.log(shares)).sum() / np.log(len(counts)))
