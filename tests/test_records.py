"""Alpaca readers: every bad line is reported with its file, line and reason."""

from __future__ import annotations

import json

import pytest

from finetune_predictor.records import RecordError, SourceSpec, content_sha256, read_records

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
