"""Meta-features: each descriptor against a hand-computed value, and the whole set on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.prediction.meta_features import (
    ProbeSettings,
    cache_key,
    compute_meta_features,
    loss_decay_rate,
    loss_stability,
    moving_average_ttr,
    ngram_repetition,
    novelty_sum,
    outlier_ratio,
    special_char_ratio,
)
from finetune_predictor.tasks import build_task
from finetune_predictor.tasks.base import label_balance

DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"}


def test_static_descriptors_by_hand():
    assert moving_average_ttr(["a a b"], window=2) == pytest.approx(0.75)  # windows {a,a}=1/2, {a,b}=1
    assert moving_average_ttr(["A, b!"], window=50) == 1.0  # shorter than a window: plain TTR
    assert ngram_repetition(["a b a b"]) == pytest.approx(1 / 3)  # bigrams ab, ba, ab
    assert ngram_repetition(["fake", "fake", "legitimate"]) == pytest.approx(1 / 3)  # labels: unigrams
    assert special_char_ratio(["a!b"]) == pytest.approx(1 / 3)
    assert label_balance(["x", "x", "y", "y"]) == pytest.approx(1.0)
    assert label_balance(["x", "x", "x", "y"]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
                                                                / math.log(2))
    assert label_balance(["x"]) == 0.0


def test_representation_descriptors_by_hand():
    orthogonal = np.eye(3)
    assert novelty_sum(orthogonal, knn=2) == pytest.approx(1.0)  # every neighbour at cosine distance 1
    # Two duplicates and one orthogonal point: A and A' see (0, 1), B sees (1, 1); weights 1 and 1/2.
    duplicated = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    assert novelty_sum(duplicated, knn=2) == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    # A binary task's answers are two strings repeated: rounding must not make the novelty negative.
    two_answers = np.repeat(np.random.default_rng(1).normal(size=(2, 64)), 50, axis=0)
    assert 0.0 <= novelty_sum(two_answers, knn=10) < 1e-12
    points = np.vstack([np.random.default_rng(0).normal(0, 0.01, (20, 4)), [[100, 100, 100, 100]]])
    assert outlier_ratio(points) == pytest.approx(1 / 21)


def test_probe_curve_descriptors_by_hand():
    losses = [math.exp(-0.1 * t) for t in range(10)]
    assert loss_decay_rate(losses) == pytest.approx(-0.1)
    assert loss_stability(losses) == pytest.approx(0.0, abs=1e-9)
    assert loss_stability([1.0, 2.0, 1.0, 2.0, 1.0]) > 0.2


def test_too_few_probe_losses_are_missing_not_zero():
    """One or two losses carry no slope or residual: NaN (counted as missing), never a measured 0.0."""
    assert math.isnan(loss_decay_rate([1.0]))
    assert math.isnan(loss_stability([1.0, 0.5]))


def _train(n: int = 24) -> pd.DataFrame:
    frame = pd.DataFrame(list(iter_articles(n, seed=4)))
    frame["source"], frame["group"] = "s", "g"
    return frame


def test_features_on_a_tiny_model_are_complete_deterministic_and_cached(tiny_session, tmp_path):
    session, task = tiny_session.with_purpose("probe"), build_task(DATA)
    training = {"learning_rate": 1e-2, "per_device_train_batch_size": 4, "precision": "fp32"}
    probe = ProbeSettings(sample_size=12, probe_steps=4, knn=3, cache=False)
    first = compute_meta_features(_train(), session, task, training, probe)
    second = compute_meta_features(_train(), session, task, training, probe)
    for key in ("mf_size", "mf_log10_learning_rate", "mf_planned_steps", "mf_out_semdiv", "mf_io_sim",
                "mf_initial_loss", "mf_input_perplexity", "mf_loss_decay_rate", "mf_grad_norm_mean",
                "mf_grad_consistency", "mf_label_balance", "mf_type_token_ratio"):
        assert math.isfinite(first[key]), key
    assert first["mf_size"] == 24 and first["mf_planned_steps"] == 18 and first["mf_probe_steps"] == 4
    for key, value in first.items():  # same inputs, same features (another task's features: NaN both times)
        if not key.endswith("_seconds"):
            assert second[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key

    cached = ProbeSettings(sample_size=12, probe_steps=4, knn=3, cache=True)
    stored = compute_meta_features(_train(), session, task, training, cached, tmp_path)
    again = compute_meta_features(_train(), session, task, training, cached, tmp_path)
    # NaN-aware: another task's features are NaN in both.
    assert pd.Series(again).sort_index().equals(pd.Series(stored).sort_index())
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert cache_key(_train(), session, training, cached) != cache_key(_train(), session,
                                                                       {**training, "learning_rate": 1e-3}, cached)
    with pytest.raises(ValueError, match=r"Unknown meta_features setting\(s\) \['steps'\]"):
        ProbeSettings.from_params({"steps": 3})


def test_task_features_give_every_task_the_same_columns():
    """One predictor learns across tasks: every run has every task's indicator and features, NaN where a
    feature means nothing for its task, and those NaNs are not counted as failed measurements."""
    from finetune_predictor.prediction.meta_features import _not_applicable, task_features
    from finetune_predictor.tasks import QATask

    classification = task_features(build_task(DATA), [{"instruction": "i", "input": "t", "output": "fake"},
                                                      {"instruction": "i", "input": "u", "output": "legitimate"}])
    qa = task_features(QATask(), [{"instruction": "i", "input": "Question: q\n\nContext: Paris", "output": "Paris"}])
    assert set(classification) == set(qa)
    assert classification["mf_task_binary_classification"] == 1.0 and classification["mf_task_qa"] == 0.0
    assert qa["mf_task_qa"] == 1.0 and math.isnan(qa["mf_label_balance"]) and qa["mf_qa_answer_in_context_rate"] == 1
    assert "mf_label_balance" in _not_applicable(QATask()) and "mf_label_balance" not in _not_applicable(
        build_task(DATA))


def test_the_cache_key_ignores_the_held_out_curve_settings_but_not_the_batches(tiny_session):
    """eval_steps / eval_max_records never change a probe: changing them must not recompute every feature;
    group_by_length changes the probe's batches, so it does re-key."""
    session, probe = tiny_session.with_purpose("probe"), ProbeSettings(sample_size=12, probe_steps=4)
    training = {"learning_rate": 1e-2, "precision": "fp32"}
    key = cache_key(_train(), session, training, probe)
    assert cache_key(_train(), session, {**training, "eval_steps": 5, "eval_max_records": 8}, probe) == key
    assert cache_key(_train(), session, {**training, "group_by_length": False}, probe) != key


def _news(n_per_class: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Records whose label is readable from their words (one topic word per class), shuffled."""
    rng = np.random.default_rng(seed)
    words = ["market", "river", "council", "stadium", "harvest", "museum", "engine", "forest"]
    records, labels = [], []
    for label, cue in (("fake", "shocking"), ("legitimate", "reported")):
        for i in range(n_per_class):
            text = " ".join(rng.choice(words, 6)) + f" {cue} item{i}"
            records.append({"instruction": "Is this news fake or legitimate?", "input": text})
            labels.append(label)
    return records, labels


def test_label_learnability_falls_with_label_noise_and_duplicates_do_not_inflate_it():
    from finetune_predictor.modeling.classical import label_learnability

    records, labels = _news(40)
    clean = label_learnability(records, labels)
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(labels), size=len(labels) * 3 // 10, replace=False)
    noisy_labels = [("legitimate" if label == "fake" else "fake") if i in flipped else label
                    for i, label in enumerate(labels)]
    assert clean > 0.9 and label_learnability(records, noisy_labels) < clean - 0.15
    # Every record twice: grouped folds keep twins together, so a copy never answers for its original (which
    # would make even noisy labels look learnable).
    noisy = label_learnability(records, noisy_labels)
    assert label_learnability(records + records, noisy_labels + noisy_labels) == pytest.approx(noisy, abs=0.08)
    assert math.isnan(label_learnability(records[:3], ["fake", "legitimate", "legitimate"]))
    # The binary task reports it among its own features.
    task = build_task({"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"})
    rows = [{**record, "output": label} for record, label in zip(records, labels, strict=True)]
    assert task.features(rows)["mf_label_cv_balanced_accuracy"] == pytest.approx(clean)
