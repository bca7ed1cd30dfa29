"""The bundled generator and the split rules that keep a data-size curve honest."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from finetune_predictor.data.splits import InsufficientDataError, nested_balanced_subset
from finetune_predictor.data.synthetic_news import bayes_ceiling, generate_article, iter_articles
from finetune_predictor.data.task_data import dataset_family, load_task_records, split_train_test

DATA = {"task": "binary_classification", "path": None, "test_path": None, "label_positive": "fake",
        "label_negative": "legitimate", "train_per_class": 20, "test_per_class": 10, "seed": 1,
        "synthetic": {"num_records": 400, "seed": 7}}


def test_generator_is_deterministic_and_prefix_stable():
    small = list(iter_articles(50, seed=3))
    large = list(iter_articles(200, seed=3))
    assert small == large[:50]
    assert generate_article(17, seed=3) == large[17]
    assert generate_article(17, seed=4) != large[17]


def test_generator_is_balanced_distinct_and_labelled():
    records = list(iter_articles(4000, seed=7))
    labels = pd.Series([r["output"] for r in records])
    assert set(labels) == {"fake", "legitimate"}
    assert abs(labels.eq("fake").mean() - 0.5) < 0.03
    assert len({r["input"] for r in records}) == len(records)


def test_no_single_cue_decides_the_label():
    """The strongest fake-style phrase agrees with the label well short of always (noisy cues)."""
    records = list(iter_articles(4000, seed=7, difficulty="easy"))
    with_cue = [r for r in records if "refused to be named" in r["input"]]
    share_fake = sum(r["output"] == "fake" for r in with_cue) / len(with_cue)
    assert 0.7 < share_fake < 0.95


def test_test_set_is_fixed_across_training_sizes_and_disjoint():
    records, _, read = load_task_records(DATA)
    train_small, test_small, summary_small = split_train_test(records, read, {**DATA, "train_per_class": 10})
    train_large, test_large, summary_large = split_train_test(records, read, {**DATA, "train_per_class": 40})
    pd.testing.assert_frame_equal(test_small, test_large)
    assert summary_small["test_sha256"] == summary_large["test_sha256"]
    assert set(train_small["id"]) <= set(train_large["id"])  # nested
    assert not set(train_large["id"]) & set(test_large["id"])
    assert train_large["output"].value_counts().to_dict() == {"fake": 40, "legitimate": 40}
    assert test_large["output"].value_counts().to_dict() == {"fake": 10, "legitimate": 10}


def test_too_few_examples_is_an_error_that_says_how_many():
    records, _, read = load_task_records(DATA)
    available = int((records["output"] == "fake").sum()) - 10
    with pytest.raises(InsufficientDataError, match=rf"asks for 5000 .* 'fake' but only {available} exist"):
        split_train_test(records, read, {**DATA, "train_per_class": 5000})


def test_nested_subsets_are_seeded():
    pool = pd.DataFrame(iter_articles(300, seed=2))
    a = nested_balanced_subset(pool, ["fake", "legitimate"], 30, seed=5)
    b = nested_balanced_subset(pool, ["fake", "legitimate"], 30, seed=5)
    c = nested_balanced_subset(pool, ["fake", "legitimate"], 30, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["id"]) != set(c["id"])


def test_user_test_file_overlap_is_removed_from_training(tmp_path):
    import json

    records = list(iter_articles(200, seed=9))
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_file.write_text("\n".join(json.dumps(r) for r in records))
    test_file.write_text("\n".join(json.dumps(r) for r in records[:30]))
    params = {**DATA, "path": str(train_file), "test_path": str(test_file), "train_per_class": 20,
              "test_per_class": None}
    records, _, read = load_task_records(params)
    train, test, summary = split_train_test(records, read, params)
    assert len(test) == 30
    assert summary["train_test_overlap_removed"] == 30
    assert not set(train["input"]) & set(test["input"])


def test_dataset_family_is_the_file_stem_without_split_words_not_the_folder():
    assert dataset_family({"path": "data/01_raw/liar.jsonl"}) != dataset_family({"path": "data/01_raw/megafake.jsonl"})
    assert dataset_family({"path": "../shared/data/liar/liar_train_alpaca.jsonl"}) == "liar"
    assert dataset_family({"path": "x/liar_test_alpaca.jsonl"}) == "liar"
    assert dataset_family({"path": "x/news-valid.csv"}) == "news"
    assert dataset_family({"path": "../shared/data/liar/train.tsv"}) == "liar"  # a split-only name: its folder
    assert dataset_family({"path": None}) == "bundled-synthetic-news-standard"
    assert dataset_family({"path": None, "synthetic": {"difficulty": "easy"}}) == "bundled-synthetic-news-easy"
    assert dataset_family({"path": "x/train.tsv", "family": "liar6"}) == "liar6"


def test_easy_is_the_original_corpus_and_the_default_is_harder():
    """Runs logged before the difficulty setting stay reproducible (easy = the original corpus, pinned by
    its first record), and the default no longer falls to a handful of keywords."""
    original = json.dumps(list(iter_articles(500, seed=7, difficulty="easy")))
    assert hashlib.sha256(original.encode()).hexdigest()[:16] == "bc1b04bd61a553d2"  # the pre-setting corpus
    assert bayes_ceiling("easy") == pytest.approx(0.868, abs=1e-3)
    assert bayes_ceiling("hard") < bayes_ceiling("standard") < bayes_ceiling("easy")
    records = pd.DataFrame(iter_articles(3000, seed=7))
    keyword = records["input"].str.contains("insiders|whispering|shared|anonymous")
    assert abs((keyword == records["output"].eq("fake")).mean() - 0.5) < 0.05  # the keyword rule is a coin flip
    with pytest.raises(ValueError, match=r"data\.synthetic\.difficulty"):
        generate_article(0, seed=7, difficulty="trivial")
