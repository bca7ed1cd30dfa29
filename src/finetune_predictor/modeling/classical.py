"""The cheap alternative beside every LLM fine-tune, trained on the same training subset and scored on the
same test set with the task's own metrics, in about a second on a CPU. Users see whether the fine-tune beats
something that costs nothing:

* classification: TF-IDF (word 1-2 grams) + logistic regression;
* QA: the three context words after the stretch that shares most words with the question (sliding-window
  overlap, the classic SQuAD baseline family; it learns nothing from the training set, so it is flat in size);
* structured: the training target of the nearest training input by TF-IDF cosine (retrieval).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from finetune_predictor.data.records import reference_lists

if TYPE_CHECKING:  # type hints only: the tasks import classical (their ranking prior is its learnability)
    from finetune_predictor.tasks import Task

_WORD = re.compile(r"\w+")
_QUESTION_CONTEXT = re.compile(r"Question:\s*(?P<question>.*?)\s*\n\s*\nContext:\s*(?P<context>.*)", re.S)
_STOPWORDS = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "by", "with", "from", "and", "or", "is", "are",
    "was", "were", "be", "been", "what", "which", "who", "whom", "when", "where", "why", "how", "did", "does",
    "do", "that", "this", "it", "its", "as"
})


def _text(frame: pd.DataFrame) -> list[str]:
    return (frame["instruction"].fillna("").astype(str) + " " + frame["input"].fillna("").astype(str)).tolist()


def _references(frame: pd.DataFrame, task: Task) -> list[Any]:
    return reference_lists(frame) or [task.target(r) for r in frame.to_dict("records")]


def classical_metrics(train: pd.DataFrame, test: pd.DataFrame, task: Task, seed: int = 0) -> dict[str, Any]:
    """The task's metrics of its cheap baseline (see the module docstring) with the task's ``primary``; empty
    when the training subset cannot fit one (a single label)."""
    if task.name == "qa":
        result = task.metrics(_references(test, task), [window_answer(r) for r in test.to_dict("records")])
    elif task.name == "structured":
        result = task.metrics(_references(test, task), nearest_target(train, test, task))
    else:
        result = _logistic_regression(train, test, task, seed)
    if task.primary_metric in result:
        result["primary"] = result[task.primary_metric]
    return result


def _logistic_regression(train: pd.DataFrame, test: pd.DataFrame, task: Task, seed: int) -> dict[str, Any]:
    """The classical classifier on the training subset, scored on the test set; AUC from the predicted
    probability of the task's positive label."""
    labels = task.candidates()
    targets = [task.target(record) for record in train.to_dict("records")]
    if not labels or len(set(targets)) < 2:
        return {}
    model = text_classifier(seed)
    model.fit(_text(train), targets)
    probabilities = model.predict_proba(_text(test))
    classes = list(model.classes_)
    positive = getattr(task, "positive_label", None)
    scores = probabilities[:, classes.index(positive)] if positive in classes else None
    predictions = [classes[i] for i in probabilities.argmax(axis=1)]
    references = [task.target(record) for record in test.to_dict("records")]
    return task.metrics(references, predictions, scores)


def text_classifier(seed: int) -> Any:
    """The classical classifier: TF-IDF (word 1-2 grams, sublinear tf) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                         LogisticRegression(max_iter=2000, C=10.0, random_state=seed))


def label_learnability(records: list[dict[str, Any]], targets: list[str], seed: int = 0, folds: int = 5,
                       max_records: int = 2000) -> float:
    """How well a training set's labels can be learnt from its own inputs: the cross-validated balanced accuracy
    of :func:`text_classifier` on the training records (at most ``max_records``, drawn with ``seed``). Folds are
    grouped by input text, so a duplicate is never scored by a model that saw its twin, and stratified by label.
    Label noise and a less separable source lower it; a label-scarce class lowers its balanced accuracy.
    NaN when a class has fewer than two distinct inputs (nothing to cross-validate)."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    frame = pd.DataFrame(records).assign(target=targets)
    if len(frame) > max_records:
        frame = frame.sample(n=max_records, random_state=seed)
    texts = pd.Series(_text(frame), index=frame.index)
    groups = texts.str.lower().str.split().str.join(" ")
    distinct = frame.assign(group=groups).drop_duplicates("group")["target"].value_counts()
    if len(distinct) < 2 or distinct.min() < 2:
        return float("nan")
    splitter = StratifiedGroupKFold(n_splits=int(min(folds, distinct.min())), shuffle=True, random_state=seed)
    predicted = cross_val_predict(text_classifier(seed), texts.tolist(), frame["target"].tolist(),
                                  groups=groups.tolist(), cv=splitter)
    return float(balanced_accuracy_score(frame["target"], predicted))


def window_answer(record: dict[str, Any], width: int = 3) -> str:
    """The ``width``-word window of the context right after the stretch that shares most content words with
    the question (answers tend to follow the words a question repeats)."""
    match = _QUESTION_CONTEXT.search(str(record.get("input") or ""))
    if match is None:
        return ""
    question = {w.lower() for w in _WORD.findall(match["question"])} - _STOPWORDS
    words = match["context"].split()
    if not words:
        return ""
    hits = np.array([float(_shares_stem(w, question)) for w in words])
    # Overlap of the 8 words before each position, then the window that follows the best one.
    before = np.convolve(hits, np.ones(8), mode="full")[: len(words)]
    start = int(np.argmax(np.concatenate([[0.0], before[:-1]])))
    window = [w for w in words[start:] if not _shares_stem(w, question)][:width]
    return " ".join(window).strip(" ,.;:")


def _shares_stem(word: str, question: set[str]) -> bool:
    """``word`` is a question word, or shares its first four letters or more with one ("land"/"landed")."""
    word = re.sub(r"\W", "", word.lower())
    return word in question or any(len(w) >= 4 and len(word) >= 4 and (word.startswith(w) or w.startswith(word))
                                   for w in question)


def nearest_target(train: pd.DataFrame, test: pd.DataFrame, task: Task) -> list[str]:
    """For each test record, the target of the most similar training input (TF-IDF cosine)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectoriser = TfidfVectorizer(sublinear_tf=True).fit(_text(train))
    similarity = vectoriser.transform(_text(test)) @ vectoriser.transform(_text(train)).T
    nearest = np.asarray(similarity.argmax(axis=1)).ravel()
    targets = [task.target(record) for record in train.to_dict("records")]
    return [targets[i] for i in nearest]

