"""Every input format into the canonical table, a corpus of broken inputs, quarantine, and fuzzing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_predictor.data.records import CANONICAL_COLUMNS, RecordError, SourceSpec, read_records
from finetune_predictor.data.splits import DataLeakError, InsufficientDataError, deduplicate, remove_test_overlap

LABELS = ["fake", "legitimate"]
GOOD = {"instruction": "Is this news fake or legitimate?", "input": "The council opened a bridge.", "output": "fake"}


def _jsonl(*items: object) -> bytes:
    return "\n".join(item if isinstance(item, str) else json.dumps(item) for item in items).encode() + b"\n"


# --- formats ---------------------------------------------------------------------------------------------


def test_alpaca_list_and_jsonl_agree(tmp_path):
    records = [GOOD, {**GOOD, "input": "Another text.", "output": "legitimate"}]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.jsonl").write_bytes(_jsonl(*records))
    as_list = read_records(SourceSpec(tmp_path / "a.json"), LABELS).records
    as_lines = read_records(SourceSpec(tmp_path / "a.jsonl"), LABELS).records
    assert list(as_list.columns) == CANONICAL_COLUMNS
    pd.testing.assert_frame_equal(as_list.drop(columns=["id", "source"]), as_lines.drop(columns=["id", "source"]))
    assert as_lines["group"].tolist() == ["a", "a"]


def test_sharegpt_messages_and_conversations(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(_jsonl(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Text A"},
                      {"role": "assistant", "content": "fake"}]},
        {"conversations": [{"from": "human", "value": "Text B"}, {"from": "gpt", "value": "legitimate"}]},
    ))
    frame = read_records(SourceSpec(path, format="sharegpt"), LABELS).records
    assert frame[["instruction", "input", "output"]].values.tolist() == [["Text A", "", "fake"],
                                                                        ["Text B", "", "legitimate"]]


LIAR_MAP = {"false": "fake", "pants-fire": "fake", "true": "real", "mostly-true": "real"}


def test_headerless_tsv_with_positions_and_label_map(tmp_path):
    path = tmp_path / "raw.tsv"
    path.write_text("1.json\tfalse\tThe moon is cheese.\tx\n2.json\thalf-true\tTaxes rose.\tx\n"
                    "3.json\ttrue\tWater is wet.\tx\n")
    spec = SourceSpec(path, format="tsv", header=False, columns={"id": 0, "output": 1, "input": 2},
                      instruction="Is this statement real or fake?", label_map=LIAR_MAP)
    result = read_records(spec, ["fake", "real"])
    assert result.records[["id", "input", "output"]].values.tolist() == [["1.json", "The moon is cheese.", "fake"],
                                                                        ["3.json", "Water is wet.", "real"]]
    assert result.unmapped_labels == {"half-true": 1}
    assert result.summary()["labels_dropped_by_label_map"] == {"half-true": 1}


def test_real_liar_raw_tsv(liar_dir):
    spec = SourceSpec(liar_dir / "train.tsv", format="tsv", header=False,
                      columns={"id": 0, "output": 1, "input": 2}, instruction="Is this statement real or fake?",
                      label_map=LIAR_MAP)
    result = read_records(spec, ["fake", "real"])
    counts = result.records["output"].value_counts().to_dict()
    # The shared binary files keep true/mostly-true as real and false/pants-fire as fake: the same counts.
    assert counts == {"real": 3649, "fake": 2840}
    assert set(result.unmapped_labels) == {"half-true", "barely-true"}
    assert len(result.records) + sum(result.unmapped_labels.values()) == 10269


def test_csv_with_header_parquet_and_save_to_disk(tmp_path):
    frame = pd.DataFrame({"text": ["A", "B"], "label": ["fake", "legitimate"], "family": ["f1", "f1"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_pandas(frame)}).save_to_disk(str(tmp_path / "hf"))
    columns = {"input": "text", "output": "label", "group": "family"}
    for path in (tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "hf"):
        out = read_records(SourceSpec(path, columns=columns, instruction="Classify."), LABELS).records
        assert out[["instruction", "input", "output", "group"]].values.tolist() == [
            ["Classify.", "A", "fake", "f1"], ["Classify.", "B", "legitimate", "f1"]], path


# --- the broken-input corpus: each case asserts the file, the line (or row/record) and the reason ----------

BROKEN = [
    # (id, file name, content, SourceSpec kwargs, expected location, expected reason regex)
    ("malformed-json-line", "d.jsonl", _jsonl(GOOD, '{"instruction": "x", "output": '), {}, ":2",
     "malformed JSON line"),
    ("truncated-json-list", "d.json", b'[{"instruction": "x", "output": "fake"},', {}, ":1", "malformed JSON"),
    ("json-object-not-list", "d.json", b'{"instruction": "x", "output": "fake", "extra": {\n"a": 1}}', {}, ":1",
     "must hold a list"),
    ("missing-output", "d.jsonl", _jsonl(GOOD, {"instruction": "x", "input": "y"}), {}, ":2", "missing field 'output'"),
    ("missing-instruction", "d.jsonl", _jsonl({"input": "y", "output": "fake"}), {}, ":1",
     "missing field 'instruction'"),
    ("empty-output", "d.jsonl", _jsonl({**GOOD, "output": "  "}), {}, ":1", "empty 'output'"),
    ("empty-text", "d.jsonl", _jsonl({**GOOD, "instruction": " ", "input": ""}), {}, ":1", "empty text"),
    ("unknown-label", "d.jsonl", _jsonl(GOOD, {**GOOD, "output": "satire"}), {}, ":2", "unknown label 'satire'"),
    ("label-wrong-case", "d.jsonl", _jsonl({**GOOD, "output": "Fake"}), {}, ":1", "unknown label 'Fake'"),
    ("output-is-number", "d.jsonl", _jsonl({**GOOD, "output": 1}), {}, ":1", "'output' must be a string, got int"),
    ("input-is-list", "d.jsonl", _jsonl({**GOOD, "input": ["a"]}), {}, ":1", "'input' must be a string, got list"),
    ("instruction-is-null", "d.jsonl", _jsonl({**GOOD, "instruction": None}), {}, ":1",
     "'instruction' must be a string, got NoneType"),
    ("line-is-array", "d.jsonl", _jsonl(["instruction", "x"]), {}, ":1", "expected a JSON object, got list"),
    ("line-is-string", "d.jsonl", _jsonl('"just text"'), {}, ":1", "expected a JSON object, got str"),
    ("latin1-bytes", "d.jsonl", _jsonl(GOOD) + '{"instruction": "caf\xe9", "output": "fake"}\n'.encode("latin-1"),
     {}, ":2", "not valid UTF-8"),
    ("empty-file", "d.jsonl", b"", {}, "", "file is empty"),
    ("whitespace-file", "d.jsonl", b"\n  \n", {}, "", "file is empty"),
    ("list-item-not-object", "d.json", json.dumps([GOOD, 3]).encode(), {}, " record 2",
     "expected a JSON object, got int"),
    ("list-record-missing-field", "d.json", json.dumps([GOOD, {"instruction": "x"}]).encode(), {}, " record 2",
     "missing field 'output'"),
    ("duplicate-id", "d.jsonl", _jsonl({**GOOD, "id": "a"}, {**GOOD, "id": "a", "input": "z"}), {}, "",
     "duplicate id 'a'"),
    ("sharegpt-no-assistant", "d.jsonl", _jsonl({"messages": [{"role": "user", "content": "x"}]}),
     {"format": "sharegpt"}, ":1", "one user turn and one assistant turn"),
    ("sharegpt-unknown-role", "d.jsonl", _jsonl({"messages": [{"role": "robot", "content": "x"}]}),
     {"format": "sharegpt"}, ":1", "unknown role 'robot'"),
    ("sharegpt-missing-messages", "d.jsonl", _jsonl({"text": "x"}), {"format": "sharegpt"}, ":1",
     "missing field 'messages'"),
    ("csv-missing-column", "d.csv", b"text,label\nA,fake\n", {"columns": {"input": "text", "output": "target"},
                                                              "instruction": "C"}, ":1",
     r"no column 'target' \(data.columns.output\); the columns found are: text, label"),
    ("tsv-too-few-columns", "d.tsv", b"1\tfake\tText\n2\tfake\n", {"header": False, "instruction": "C",
                                                                  "columns": {"output": 1, "input": 2}}, ":2",
     "has 2 columns; data.columns.input asks for column 2"),
    ("csv-unknown-label", "d.csv", b"text,label\nA,fake\nB,maybe\n", {"columns": {"input": "text", "output": "label"},
                                                                   "instruction": "C"}, ":3", "unknown label 'maybe'"),
    ("all-labels-unmapped", "d.tsv", b"1\thalf-true\tText\n", {"header": False, "instruction": "C",
                                                              "columns": {"output": 1, "input": 2},
                                                              "label_map": {"false": "fake"}}, "",
     "no usable records; 1 dropped by data.label_map"),
]


@pytest.mark.parametrize(("name", "content", "spec", "where", "reason"), [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_broken_input_names_file_location_and_reason(tmp_path, name, content, spec, where, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RecordError) as info:
        read_records(SourceSpec(path, **spec), LABELS)
    message = str(info.value)
    assert message.startswith(f"{path}{where}: ") or message.startswith(f"{path}{where} "), message
    assert re.search(reason, message), message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RecordError, match=r"nope\.jsonl: file not found"):
        read_records(SourceSpec(tmp_path / "nope.jsonl"), LABELS)
    with pytest.raises(RecordError, match="save_to_disk"):
        read_records(SourceSpec(tmp_path, format="hf_disk"), LABELS)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(RecordError, match=r"bad\.parquet: not a readable Parquet file"):
        read_records(SourceSpec(tmp_path / "bad.parquet"), LABELS)


def test_parquet_wrong_type_names_the_row(tmp_path):
    # A label column stored as integers (0/1) instead of the task's label strings.
    pd.DataFrame({"instruction": ["a", "b"], "input": ["x", "y"], "output": [1, 0]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(RecordError, match=r"t\.parquet row 1: field 'output' must be a string, got int"):
        read_records(SourceSpec(tmp_path / "t.parquet"), LABELS)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"data\.format"):
        SourceSpec(Path("x.jsonl"), format="xml")
    with pytest.raises(ValueError, match=r"data\.columns has unknown field\(s\) \['text'\]"):
        SourceSpec(Path("x.csv"), columns={"text": "a"})
    with pytest.raises(ValueError, match=r"data\.on_invalid"):
        read_records(SourceSpec(Path("x.jsonl")), LABELS, on_invalid="ignore")


# --- quarantine: bad records are kept with their reason, never dropped silently ---------------------------


def test_quarantine_keeps_good_records_and_lists_rejects(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(_jsonl(GOOD, "{not json", {**GOOD, "output": "satire"}, {**GOOD, "input": "ok", "output":
                                                                             "legitimate"}))
    result = read_records(SourceSpec(path), LABELS, on_invalid="quarantine")
    assert len(result.records) == 2
    assert [(r["location"], r["reason"].split(":")[0].split(";")[0]) for r in result.rejects] == [
        ("line 2", "malformed JSON line"), ("line 3", "unknown label 'satire'")]
    assert result.summary()["records_rejected"] == 2
    assert '"satire"' in result.rejects[1]["raw"]


# --- duplicates, leaks and sizes -------------------------------------------------------------------------


def _frame(texts: list[str], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": [str(i) for i in range(len(texts))], "instruction": "Q", "input": texts,
                         "output": labels, "source": "s", "group": "g"})


def test_exact_and_near_duplicates_are_counted_and_dropped():
    frame = _frame(["A cat.", "A cat.", "a  CAT!", "A dog."], ["fake", "fake", "legitimate", "fake"])
    kept, stats = deduplicate(frame, "drop")
    assert stats == {"exact_duplicates": 1, "near_duplicates": 1, "conflicting_labels": 1, "duplicates_removed": 2}
    assert kept["input"].tolist() == ["A cat.", "A dog."]
    assert len(deduplicate(frame, "keep")[0]) == 4
    with pytest.raises(DataLeakError, match="1 exact and 1 near duplicate"):
        deduplicate(frame, "error")


def test_test_text_in_training_is_an_error_under_the_strict_policy():
    pool, test = _frame(["A.", "B.", "C."], ["fake"] * 3), _frame(["b"], ["fake"])
    assert remove_test_overlap(pool, test, "drop")[1] == 1
    with pytest.raises(DataLeakError, match="1 training records repeat test-set text"):
        remove_test_overlap(pool, test, "error")


def test_too_few_for_a_balanced_sample_says_how_many():
    from finetune_predictor.data.splits import nested_balanced_subset

    with pytest.raises(InsufficientDataError, match="asks for 3 examples of label 'legitimate' but only 1 exist"):
        nested_balanced_subset(_frame(["a", "b", "c", "d"], ["fake"] * 3 + ["legitimate"]), LABELS, 3, 0)


# --- fuzzing: any bytes give records or a located RecordError, never another exception ---------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.fixed_dictionaries({}, optional={k: st.one_of(st.none(), st.integers(), st.text(max_size=8),
                                                     st.sampled_from(LABELS), st.lists(st.integers(), max_size=2))
                                        for k in ("instruction", "input", "output", "id")}).map(
        lambda d: json.dumps(d).encode()),
), max_size=6))
def test_fuzzed_jsonl_gives_records_or_a_located_error(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    for policy in ("error", "quarantine"):
        try:
            result = read_records(SourceSpec(path), LABELS, on_invalid=policy)
        except RecordError as error:
            assert str(error).startswith(str(path))
            assert error.reason
        else:
            assert set(result.records["output"]) <= set(LABELS)
            assert (result.records["instruction"].str.strip() + result.records["input"].str.strip()).str.len().min() > 0
