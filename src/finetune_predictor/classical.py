"""The cheap alternative beside every LLM fine-tune: TF-IDF + logistic regression (scikit-learn), trained on
the same training subset and scored on the same test set, in about a second on a CPU. Users see whether
the fine-tune beats a classifier that costs nothing."""

from __future__ import annotations

from typing import Any

import pandas as pd

from finetune_predictor.tasks import Task


def _text(frame: pd.DataFrame) -> list[str]:
    return (frame["instruction"].fillna("").astype(str) + " " + frame["input"].fillna("").astype(str)).tolist()


def classical_metrics(train: pd.DataFrame, test: pd.DataFrame, task: Task, seed: int = 0) -> dict[str, Any]:
    """The task's metrics of TF-IDF (word 1-2 grams, sublinear tf) + logistic regression; AUC from the
    predicted probability of the task's positive label. Empty for tasks without a closed label set."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    labels = task.candidates()
    targets = [task.target(record) for record in train.to_dict("records")]
    if not labels or len(set(targets)) < 2:
        return {}
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(max_iter=2000, C=10.0, random_state=seed))
    model.fit(_text(train), targets)
    probabilities = model.predict_proba(_text(test))
    classes = list(model.classes_)
    positive = getattr(task, "positive_label", None)
    scores = probabilities[:, classes.index(positive)] if positive in classes else None
    predictions = [classes[i] for i in probabilities.argmax(axis=1)]
    references = [task.target(record) for record in test.to_dict("records")]
    return task.metrics(references, predictions, scores)
