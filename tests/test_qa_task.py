"""The QA task: SQuAD normalisation and scores by hand, the SQuAD reader, the split by article, the cheap
baseline, answer shuffling, and the supervised tokens of a real SQuAD record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from finetune_predictor.data import task_data
from finetune_predictor.data.records import RecordError, SourceSpec, read_records
from finetune_predictor.modeling.classical import window_answer
from finetune_predictor.modeling.evaluation import metrics_of
from finetune_predictor.tasks import QATask, build_task
from finetune_predictor.tasks.qa import exact_match, squad_normalise, token_f1

QA = {"task": "qa", "format": "squad", "train_per_class": 100, "test_per_class": 100, "seed": 42}


def test_squad_normalisation_and_scores_by_hand():
    assert squad_normalise("The  Normans, of France!") == "normans of france"
    assert exact_match("the Normans", "Normans.") == 1.0
    assert token_f1("in northern France", "France") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("", "") == 1.0 and token_f1("a", "France") == 0.0  # "a" normalises to nothing
    task = QATask()
    metrics = task.metrics([["France", "in France"], ["10th century"], ["Rollo"]], ["in France", "the 10th", None])
    assert metrics["exact_match"] == pytest.approx(1 / 3)  # max over the first question's two references
    assert metrics["f1"] == pytest.approx((1.0 + 2 * 1 * 0.5 / 1.5 + 0.0) / 3)
    assert metrics["parse_failures"] == 1


def test_parse_keeps_the_first_line_without_prefix():
    task = QATask()
    assert task.parse("Answer: France\nBecause the text says so.") == "France"
    assert task.parse("  <|im_end|>") is None and task.parse("") is None


def test_unanswerable_questions_are_scored_apart():
    task = QATask(no_answer="unanswerable")
    metrics = task.metrics([["France"], ["unanswerable"]], ["France", "Paris"])
    assert metrics["has_answer_f1"] == 1.0 and metrics["no_answer_accuracy"] == 0.0


def test_squad_reader_on_the_real_sample(squad_file):
    result = read_records(SourceSpec(squad_file, format="squad"))
    assert len(result.records) == 705 and result.unanswerable_skipped == 702
    first = result.records.iloc[0]
    assert first["input"].startswith("Question: ") and "\n\nContext: " in first["input"]
    assert first["output"] == json.loads(first["references"])[0] and first["group"] == "Normans"
    with_impossible = read_records(SourceSpec(squad_file, format="squad", include_unanswerable=True,
                                              no_answer="no answer"))
    assert len(with_impossible.records) == 1407 and (with_impossible.records["output"] == "no answer").sum() == 702
    by_paragraph = read_records(SourceSpec(squad_file, format="squad", qa_group="paragraph"))
    assert by_paragraph.records["group"].nunique() > 100


def test_squad_reader_names_what_is_wrong(tmp_path):
    not_squad = tmp_path / "q.json"
    not_squad.write_text(json.dumps([{"instruction": "x", "output": "y"}]))
    with pytest.raises(RecordError, match="expected an object with a 'data' list"):
        read_records(SourceSpec(not_squad, format="squad"))
    broken = tmp_path / "b.json"
    broken.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "1"}]}]}]}))
    with pytest.raises(RecordError, match=r"data\[0\].paragraphs\[0\].qas\[0\]: missing 'question'"):
        read_records(SourceSpec(broken, format="squad"))


def test_test_split_is_by_article_and_nested(squad_file):
    data = {**QA, "path": str(squad_file)}
    records, _, summary = task_data.load_task_records(data)
    train, test, split = task_data.split_train_test(records, summary, data)
    assert len(train) == 100 and len(test) == 100
    assert not set(train["group"]) & set(test["group"]) and split["test_groups"]
    contexts = {text.split("Context: ")[1] for text in test["input"]}
    assert not contexts & {text.split("Context: ")[1] for text in train["input"]}
    subsets, test2, validation, _, _ = task_data.nested_subsets(records, summary, data, [20, 50], 20)
    small, large = task_data.subset(subsets, 20), task_data.subset(subsets, 50)
    assert set(small["id"]) <= set(large["id"]) and test2["id"].tolist() == test["id"].tolist()
    # The validation set the sweep selects on is split by article too: no passage of it is trained on.
    assert len(validation) == 20 and not set(validation["group"]) & (set(large["group"]) | set(test["group"]))


def test_group_split_refuses_a_single_article(tmp_path):
    data = {"data": [{"title": "Only", "paragraphs": [{"context": f"Context {i} says X{i}.", "qas": [
        {"id": str(i), "question": f"What does context {i} say?", "answers": [{"text": f"X{i}"}]}]}
        for i in range(10)]}]}
    path = tmp_path / "one.json"
    path.write_text(json.dumps(data))
    params = {**QA, "path": str(path), "train_per_class": 2, "test_per_class": 2}
    records, _, summary = task_data.load_task_records(params)
    with pytest.raises(ValueError, match="needs at least two groups"):
        task_data.split_train_test(records, summary, params)


def test_shuffled_answers_move_exactly_the_share_asked():
    targets = [f"answer {i}" for i in range(20)]
    corrupted = QATask().corrupt(targets, 0.25, np.random.default_rng(0))
    assert sum(a != b for a, b in zip(targets, corrupted, strict=True)) == 5
    assert sorted(corrupted) == sorted(targets)  # answers are moved between questions, not invented


def test_open_task_metrics_are_unprefixed_and_use_every_reference():
    predictions = pd.DataFrame({"id": ["a", "b"], "reference": ["France", "Rollo"],
                                "references": [["France", "in France"], ["Rollo"]],
                                "generated_text": ["in France", "no idea"],
                                "generated_prediction": ["in France", "no idea"], "engine": "hf",
                                "prompts_truncated": 0})
    metrics = metrics_of(predictions, QATask())
    assert metrics["exact_match"] == 0.5 and metrics["primary"] == metrics["f1"] == 0.5
    assert not any(key.startswith("gen_") for key in metrics)


def test_window_baseline_reads_after_the_question_words():
    record = {"input": "Question: Where did Rollo land?\n\nContext: Rollo landed near Rouen in 911 with ships."}
    assert window_answer(record, width=2) == "near Rouen"


def test_features_answer_in_context():
    records = [{"instruction": "i", "input": "Question: q\n\nContext: Paris is big", "output": "Paris"},
               {"instruction": "i", "input": "Question: q\n\nContext: Rome", "output": "Milan"}]
    features = build_task({"task": "qa"}).features(records)
    assert features["mf_qa_answer_in_context_rate"] == 0.5 and features["mf_qa_answer_words_mean"] == 1.0


def test_predictions_read_back_from_json_keep_numeric_answers_as_text(tmp_path):
    """A JSON reader turns answers like "1945" into numbers unless told not to; the metrics must still match."""
    from kedro_datasets.pandas import JSONDataset

    frame = pd.DataFrame({"id": ["a", "b"], "reference": ["1945", "12"], "generated_text": ["1945", ""],
                          "generated_prediction": ["1945", None], "engine": "hf", "prompts_truncated": 0})
    dataset = JSONDataset(filepath=str(tmp_path / "p.jsonl"), save_args={"orient": "records", "lines": True},
                          load_args={"orient": "records", "lines": True, "dtype": False})
    dataset.save(frame)
    metrics = metrics_of(dataset.load(), QATask())
    assert metrics["exact_match"] == 0.5 and metrics["parse_failures"] == 1


def test_a_missing_answer_never_matches_an_answer_that_normalises_to_nothing():
    assert QATask().metrics([["the"]], [None])["exact_match"] == 0.0
