"""Alpaca readers: every bad line is reported with its file, line and reason."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from finetune_predictor.data import task_data
from finetune_predictor.data.records import RecordError, SourceSpec, content_sha256, read_records
from finetune_predictor.data.splits import InsufficientDataError
from finetune_predictor.errors import UserFacingError

GOOD = {"instruction": "Is it fake?", "input": "Some article.", "output": "fake"}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


def _read_alpaca(path, labels=None):
    return read_records(SourceSpec(path=path, format="alpaca"), labels).records


def test_reads_jsonl_and_json_list(tmp_path):
    lines = [GOOD, {**GOOD, "output": "legitimate", "input": "Other."}]
    jsonl = _write(tmp_path, "a.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    as_list = _write(tmp_path, "a.json", json.dumps(lines))
    a = _read_alpaca(jsonl, labels=["fake", "legitimate"])
    b = _read_alpaca(as_list, labels=["fake", "legitimate"])
    assert a["output"].tolist() == ["fake", "legitimate"]
    assert content_sha256(a) == content_sha256(b)


@pytest.mark.parametrize(("content", "line", "reason"), [
    ('{"instruction": "x", "output": "fake"}\n{"instruction": "x", "output": "fake"\n', 2, "malformed JSON line"),
    ('{"instruction": "x", "input": "y"}\n', 1, "missing field 'output'"),
    ('{"instruction": "x", "input": "y", "output": "maybe"}\n', 1, "unknown label 'maybe'"),
    ('{"instruction": "x", "input": "y", "output": 1}\n', 1, "field 'output' must be a string"),
    ('{"instruction": "", "input": " ", "output": "fake"}\n', 1, "empty text"),
    ('{"instruction": "x", "input": "y", "output": " "}\n', 1, "empty 'output'"),
    ('["instruction", "x"]\n', 1, "expected a JSON object"),
])
def test_bad_lines_are_located(tmp_path, content, line, reason):
    path = _write(tmp_path, "bad.jsonl", content)
    with pytest.raises(RecordError, match=rf"bad\.jsonl:{line}: {reason}") as info:
        _read_alpaca(path, labels=["fake", "legitimate"])
    assert info.value.line == line


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("empty.jsonl", "", "file is empty"),
    ("latin1.jsonl", '{"instruction": "caf\xe9", "output": "fake"}'.encode("latin-1"), "not valid UTF-8"),
    ("object.json", '{"instruction": "x"}', "must hold a list"),
])
def test_bad_files_are_named(tmp_path, name, content, reason):
    path = _write(tmp_path, name, content)
    with pytest.raises(RecordError, match=reason):
        _read_alpaca(path)


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match=r"nope\.jsonl: file not found"):
        _read_alpaca(tmp_path / "nope.jsonl")


# --- issue 18: causes named, not hidden behind counts ---------------------------------------------------------

LABELS = ["fake", "legitimate"]
DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate",
        "train_per_class": 10, "test_per_class": 5, "seed": 42}


def _jsonl(tmp_path, name, records):
    return _write(tmp_path, name, "".join(json.dumps(record) + "\n" for record in records))


def _story(index, label=None):
    return {"instruction": "Is it fake?", "input": f"Story {index} of the day.",
            "output": label or ("fake" if index % 2 else "legitimate")}


def test_a_csv_header_without_the_mapped_columns_lists_the_columns_found(tmp_path):
    """It said "missing field 'instruction'" on line 2; the header itself is the problem."""
    path = _write(tmp_path, "claims.csv", "text,verdict\nThe moon is cheese.,fake\n")
    with pytest.raises(RecordError) as info:
        read_records(SourceSpec(path=path), LABELS, "quarantine")  # a whole-file problem: never quarantined
    assert str(info.value) == (f"{path}:1: no column 'instruction' (data.columns.instruction), 'output' "
                               "(data.columns.output); the columns found are: text, verdict")
    assert info.value.where == f"{path}:1" and "data.columns.instruction=<column>" in info.value.fix
    mapped = SourceSpec(path=path, columns={"input": "text", "output": "verdict"}, instruction="Is it fake?")
    assert read_records(mapped, LABELS).records["output"].tolist() == ["fake"]
    renamed = SourceSpec(path=path, columns={"input": "text", "output": "label"}, instruction="Is it fake?")
    with pytest.raises(RecordError, match=r"no column 'label' \(data.columns.output\); the columns found"):
        read_records(renamed, LABELS)


def test_a_parquet_without_the_mapped_columns_lists_the_columns_found(tmp_path):
    path = tmp_path / "claims.parquet"
    pd.DataFrame({"text": ["a"], "label": ["fake"]}).to_parquet(path)
    with pytest.raises(RecordError, match=r"no column 'instruction' .* the columns found are: text, label"):
        read_records(SourceSpec(path=path), LABELS)


def test_a_json_record_without_a_field_names_its_fields_and_data_columns(tmp_path):
    path = _jsonl(tmp_path, "claims.jsonl", [{"text": "a", "label": "fake"}])
    with pytest.raises(RecordError, match=r"missing field 'instruction'; its fields: text, label "
                                          r"\(map yours with data.columns.instruction\)"):
        read_records(SourceSpec(path=path), LABELS)


def test_an_abnormally_long_record_is_refused_or_quarantined(tmp_path):
    """A 5 MB input went through silently: beyond data.max_record_chars it is a record error."""
    huge = {"instruction": "Is it fake?", "input": "x" * 200_001, "output": "fake"}
    path = _jsonl(tmp_path, "big.jsonl", [_story(1), huge])
    with pytest.raises(RecordError, match=r"big\.jsonl:2: abnormally long record: 200,0\d\d characters, over "
                                          r"data.max_record_chars=100,000"):
        read_records(SourceSpec(path=path), LABELS)
    quarantined = read_records(SourceSpec(path=path), LABELS, "quarantine")
    assert len(quarantined.records) == 1 and quarantined.summary()["rejected_by_reason"] == {
        "abnormally long record": 1}
    assert len(quarantined.rejects[0]["raw"]) <= 2000  # the rejects file keeps a prefix, not 200 kB
    unlimited = SourceSpec.from_params({"max_record_chars": None}, path)
    assert len(read_records(unlimited, LABELS).records) == 2
    assert SourceSpec.from_params({"max_record_chars": 10}, path).max_record_chars == 10
    assert SourceSpec.from_params({}, path).max_record_chars == 100_000


def test_a_duplicates_only_file_says_how_many_duplicates_were_dropped(tmp_path):
    """It said "only 1 exist" without the 598 duplicates behind it."""
    path = _jsonl(tmp_path, "dups.jsonl", [_story(i % 2) for i in range(600)])
    records, _, summary = task_data.load_task_records({**DATA, "path": str(path)})
    with pytest.raises(InsufficientDataError) as info:
        task_data.split_train_test(records, summary, {**DATA, "path": str(path)})
    assert "only 1 exist" in str(info.value) and "598 duplicate record(s) were dropped first" in str(info.value)
    assert info.value.where == "data.test_per_class"


def test_a_test_file_equal_to_the_training_file_names_the_overlap(tmp_path, caplog):
    """It said "only 0 exist" without mentioning that the overlap with the test set was removed."""
    path = _jsonl(tmp_path, "same.jsonl", [_story(i) for i in range(20)])
    data = {**DATA, "path": str(path), "test_path": str(path)}
    records, _, summary = task_data.load_task_records(data)
    with caplog.at_level(logging.INFO, logger="finetune_predictor.data.task_data"), \
            pytest.raises(InsufficientDataError) as info:
        task_data.split_train_test(records, summary, data)
    message = str(info.value)
    assert "only 5 exist" in message and "10 removed because their text is in the test set" in message
    assert "data.test_path is the training file itself" in message and "5 remain" not in message
    assert "10 of 20 training candidate(s) removed: their text is in the test set" in caplog.text


def test_quarantined_records_and_duplicates_are_counted_on_the_console(tmp_path, caplog):
    rows = [_story(i) for i in range(30)] + [_story(0), _story(1, "maybe")]
    path = _jsonl(tmp_path, "mixed.jsonl", rows)
    data = {**DATA, "path": str(path), "on_invalid": "quarantine"}
    with caplog.at_level(logging.INFO, logger="finetune_predictor.data.task_data"):
        records, rejects, summary = task_data.load_task_records(data)
        train, _, split = task_data.split_train_test(records, summary, data)
    assert f"data.path={path}: 1 record(s) quarantined (unknown label 'maybe': 1; the first at line 32)" \
        in caplog.text
    assert "training source: 1 duplicate record(s) dropped (1 exact, 0 near; data.duplicates=drop)" in caplog.text
    line = task_data.split_headline(split)
    assert line.startswith("data: train 20 (") and ", test 10 (" in line and "from 31 records of" in line
    assert line.endswith("removed: 1 duplicate(s), 1 quarantined"), line
    assert len(rejects) == 1 and len(train) == 20


def test_split_headline_counts_what_was_removed():
    summary = {"source": "a.jsonl", "records_available": 700, "train_size": 4, "test_size": 2,
               "train_label_counts": {"fake": 2, "legitimate": 2}, "test_label_counts": {"fake": 1, "legitimate": 1},
               "duplicates": {"pool": {"duplicates_removed": 598}, "test_file": {"duplicates_removed": 2}},
               "train_test_overlap_removed": 7,
               "read": {"train_file": {"records_rejected": 3, "rejected_by_reason": {"abnormally long record": 1},
                                       "labels_dropped_by_label_map": {"half-true": 5}}}}
    assert task_data.split_headline(summary, {"records_truncated": 9}) == (
        "data: train 4 (fake 2, legitimate 2), test 2 (fake 1, legitimate 1) from 700 records of a.jsonl; "
        "removed: 600 duplicate(s), 7 repeating test-set text, 3 quarantined (1 over data.max_record_chars), "
        "5 outside data.label_map; truncated: 9 training prompt(s) cut to model.max_length")
    clean = {**summary, "duplicates": {}, "train_test_overlap_removed": 0, "read": {}}
    assert task_data.split_headline(clean).endswith("removed: nothing")
    sweep = {**clean, "subset_sha256": {"2": "…", "4": "…"}}
    assert task_data.split_headline(sweep).startswith("data: largest training subset 4 (fake 2, legitimate 2)")


def test_record_errors_are_user_facing_with_a_fix(tmp_path):
    error = RecordError(tmp_path / "a.jsonl", 3, "unknown label 'maybe'")
    assert isinstance(error, UserFacingError) and isinstance(error, ValueError)
    assert error.where == f"{tmp_path / 'a.jsonl'}:3" and "data.on_invalid=quarantine" in error.fix
    assert str(error) == f"{tmp_path / 'a.jsonl'}:3: unknown label 'maybe'"
    assert RecordError("t.parquet", 4, "bad", unit="row").where == "t.parquet row 4"
