"""The strict label parser and the classification metrics."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_predictor.tasks import BinaryClassificationTask, build_task

TASK = BinaryClassificationTask("fake", "legitimate")


@pytest.mark.parametrize(("text", "expected"), [
    ("fake", "fake"),
    ("Fake.", "fake"),
    ("  legitimate<|im_end|>", "legitimate"),
    ("Answer: legitimate", "legitimate"),
    ("The article is fake.", "fake"),
    ("This news is legitimate and well sourced", "legitimate"),
    ("**FAKE**", "fake"),
])
def test_parser_reads_clear_answers(text, expected):
    assert TASK.parse(text) == expected


@pytest.mark.parametrize("text", [
    "The article is not legitimate.",   # negated: never flipped into "fake"
    "not fake",
    "It isn't fake at all",
    "never legitimate",
    "untrue",                            # no label named
    "I cannot tell.",
    "",
    "fake or legitimate? Hard to say",   # both labels
    "fakes",                             # not the word itself
])
def test_parser_refuses_ambiguous_or_negated(text):
    assert TASK.parse(text) is None


def test_parser_with_real_and_fake_labels():
    task = BinaryClassificationTask("fake", "real")
    assert task.parse("real") == "real"
    assert task.parse("not real") is None
    assert task.parse("untrue") is None
    assert task.parse("surreal") is None


def test_metrics_hand_computed():
    y_true = ["fake", "fake", "fake", "legitimate", "legitimate", "legitimate"]
    y_pred = ["fake", "fake", "legitimate", "legitimate", None, "legitimate"]
    metrics = TASK.metrics(y_true, y_pred, scores=np.array([0.9, 0.8, 0.4, 0.3, 0.6, 0.1]))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["parse_failures"] == 1
    assert metrics["parse_failure_rate"] == pytest.approx(1 / 6)
    # fake: precision 2/2, recall 2/3; legitimate: precision 2/3, recall 2/3
    assert metrics["precision_fake"] == pytest.approx(1.0)
    assert metrics["recall_fake"] == pytest.approx(2 / 3)
    assert metrics["precision_legitimate"] == pytest.approx(2 / 3)
    f1_fake, f1_legit = 0.8, 2 / 3
    assert metrics["f1_macro"] == pytest.approx((f1_fake + f1_legit) / 2)
    assert metrics["confusion_matrix"] == [[2, 1], [0, 2]]
    # AUC: positives 0.9, 0.8, 0.4 vs negatives 0.3, 0.6, 0.1 -> 8 of 9 pairs ordered
    assert metrics["auc"] == pytest.approx(8 / 9)


def test_task_configuration_errors():
    with pytest.raises(ValueError, match="must differ"):
        BinaryClassificationTask("Fake", "fake")
    with pytest.raises(ValueError, match=r"data\.task"):
        build_task({"task": "regression", "label_positive": "a", "label_negative": "b"})
