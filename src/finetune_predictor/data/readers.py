"""One reader per format, each giving the raw items of a source: ``(line or row number, item)``.

Alpaca JSON (a list) or JSONL and ShareGPT / ``messages`` JSONL (:func:`_iter_json`), CSV/TSV with or without a
header (:func:`_iter_delimited`), Parquet, a ``datasets.Dataset.save_to_disk`` folder, and SQuAD JSON, whose
reader already gives canonical fields (one item per question) and whose answer normalisation
(:func:`squad_normalise`) the QA task compares answers under. An item is the record as the file has it, a
:class:`RecordError` for a record that cannot be read (so that the quarantine policy can set it aside), or
:data:`SKIPPED`; a problem with the whole file raises. ``records.read_records`` turns the items into canonical
records.
"""

from __future__ import annotations

import csv
import io
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.data.source import RecordError, SourceSpec

# SQuAD's answer normalisation (its evaluation script's): the reader drops answers it leaves empty, the QA task
# compares answers under it.
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def squad_normalise(text: str) -> str:
    """The SQuAD evaluation's normalisation: lower case, punctuation and the articles a/an/the removed,
    whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


QA_INSTRUCTION = "Answer the question with a short span copied from the context."
SKIPPED = object()  # an item the reader leaves out by setting (not an error)


# --- raw items: (line or row number, item) ---------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(path, None, "file not found") from None
    except IsADirectoryError:
        raise RecordError(path, None, "is a folder; set data.format=hf_disk for a save_to_disk folder") from None
    except PermissionError:
        raise RecordError(path, None, "permission denied") from None
    if not raw.strip():
        raise RecordError(path, None, "file is empty")
    return raw


def _decoded_lines(path: Path, raw: bytes) -> Iterator[tuple[int, str | RecordError]]:
    """Each physical line decoded as UTF-8, or the error for that line (so one bad line can be quarantined)."""
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            yield number, line.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError as error:
            yield number, RecordError(path, number, f"not valid UTF-8 (byte {error.start} of the line)")


def _is_json_list(path: Path, head: bytes) -> bool:
    """A JSON list of records (``.jsonl`` is always one record per line)."""
    return path.suffix.lower() != ".jsonl" and head.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"[")


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    raw = _read_bytes(path)
    if _is_json_list(path, raw[:4096]):
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            raise RecordError(path, line, f"not valid UTF-8 (byte {error.start})") from None
        except json.JSONDecodeError as error:
            raise RecordError(path, error.lineno, f"malformed JSON: {error.msg}") from None
        # Records of a JSON list have no line of their own: they are located by their 1-based index.
        yield from ((index + 1, item) for index, item in enumerate(data))
        return
    if path.suffix.lower() == ".json" and raw.lstrip().startswith(b"{") and b"\n{" not in raw.strip():
        raise RecordError(path, 1, "a .json file must hold a list of records (or one JSON object per line)")
    for number, line in _decoded_lines(path, raw):
        if isinstance(line, RecordError):
            yield number, line
            continue
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, RecordError(path, number, f"malformed JSON line: {error.msg}")


def _iter_delimited(spec: SourceSpec, delimiter: str) -> Iterator[tuple[int, Any]]:
    path = spec.path
    raw = _read_bytes(path)
    good_lines: list[str] = []
    line_numbers: list[int] = []
    for number, line in _decoded_lines(path, raw):
        if isinstance(line, RecordError):
            yield number, line
            continue
        good_lines.append(line)
        line_numbers.append(number)
    # TSV files (LIAR among them) quote nothing and carry literal quote marks inside fields.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO("\n".join(good_lines)), delimiter=delimiter, quoting=quoting)
    names: list[str] | None = None
    try:
        for values in reader:
            number = line_numbers[min(reader.line_num, len(line_numbers)) - 1]
            if not values or not any(v.strip() for v in values):
                continue
            if spec.header and names is None:
                names = [v.strip() for v in values]
                _check_columns(spec, names, number)
                continue
            yield number, dict(zip(names, values, strict=False)) if names else values
    except csv.Error as error:
        line = line_numbers[min(reader.line_num, len(line_numbers)) - 1]
        raise RecordError(path, line, f"malformed CSV: {error}") from None


def _check_columns(spec: SourceSpec, found: list[str], line: int | None) -> None:
    """A table whose columns lack what the mapping needs is refused once, with the columns it has, instead
    of failing on its first record with a field that no record can have."""
    if not spec.columns and ({"messages", "conversations"} & set(found)):
        return  # ShareGPT-style rows
    needed = {"instruction": spec.columns.get("instruction", "instruction")}
    if spec.instruction is not None and "instruction" not in spec.columns:
        del needed["instruction"]  # data.instruction stands in for the column
    needed["output"] = spec.columns.get("output", "output")
    needed.update({name: column for name, column in spec.columns.items() if isinstance(column, str)})
    missing = {name: column for name, column in needed.items() if column not in found}
    if not missing:
        return
    wanted = ", ".join(f"{column!r} (data.columns.{name})" for name, column in missing.items())
    example = ",".join(f"data.columns.{name}=<column>" for name in missing)
    raise RecordError(spec.path, line, f"no column {wanted}; the columns found are: {', '.join(found) or 'none'}",
                      fix=f"map the file's columns with data.columns, e.g. --params \"{example}\""
                          + ("; or set data.instruction for a file without an instruction column"
                             if "instruction" in missing else ""))


def _iter_table(frame: pd.DataFrame) -> Iterator[tuple[int, Any]]:
    yield from enumerate(frame.to_dict("records"), start=1)


def _iter_parquet(spec: SourceSpec) -> Iterator[tuple[int, Any]]:
    path = spec.path
    if not path.exists():
        raise RecordError(path, None, "file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise RecordError(path, None, f"not a readable Parquet file ({type(error).__name__}: {error})") from None
    if frame.empty:
        raise RecordError(path, None, "file is empty")
    _check_columns(spec, [str(c) for c in frame.columns], None)
    yield from _iter_table(frame)


def _iter_hf_disk(spec: SourceSpec) -> Iterator[tuple[int, Any]]:
    path, split = spec.path, spec.split
    if not path.is_dir():
        raise RecordError(path, None, "not found: a datasets.save_to_disk folder was expected")
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as error:
        raise RecordError(path, None, f"not a datasets.save_to_disk folder ({type(error).__name__}: {error})") from None
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise RecordError(path, None, f"has no split {split!r} (data.split); splits: {sorted(dataset)}")
        dataset = dataset[split]
    if len(dataset) == 0:
        raise RecordError(path, None, "dataset is empty")
    _check_columns(spec, list(dataset.column_names), None)
    yield from _iter_table(dataset.to_pandas())


def _iter_squad(spec: SourceSpec) -> Iterator[tuple[int, Any]]:
    """One item per question (numbered from 1 in file order), already in canonical fields. The question
    comes before the context in the prompt so that truncating a long context never cuts the question."""
    path = spec.path
    raw = _read_bytes(path)
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(path, getattr(error, "lineno", None), f"not SQuAD JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise RecordError(path, None, "not SQuAD JSON: expected an object with a 'data' list of articles "
                                      "(data[].paragraphs[].{context, qas[]}); for other JSON use data.format=alpaca")
    number = 0
    for a_index, article in enumerate(document["data"]):
        title = str(article.get("title") or f"article-{a_index}") if isinstance(article, dict) else f"article-{a_index}"
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise RecordError(path, None, f"data[{a_index}] ({title}) has no 'paragraphs' list")
        for p_index, paragraph in enumerate(paragraphs):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for q_index, qa in enumerate(paragraph.get("qas") or [] if isinstance(paragraph, dict) else []):
                number += 1
                where = f"data[{a_index}].paragraphs[{p_index}].qas[{q_index}]"
                yield number, _squad_item(qa, context, title, f"{title}#p{p_index}", where, spec)


def _squad_item(qa: Any, context: Any, title: str, paragraph_group: str, where: str,
                spec: SourceSpec) -> Any:
    """One SQuAD question as canonical fields, ``SKIPPED`` for an unanswerable question left out, or the
    error."""
    def error(reason: str) -> RecordError:
        return RecordError(spec.path, None, f"{where}: {reason}")

    if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
        return error("missing 'question' (a string)")
    if not isinstance(context, str) or not context.strip():
        return error("its paragraph has no 'context' text")
    answers = [a.get("text") for a in qa.get("answers") or [] if isinstance(a, dict)]
    # As the official SQuAD evaluation, answers that normalise to nothing ("the") are not references.
    answers = list(dict.fromkeys(a.strip() for a in answers if isinstance(a, str) and squad_normalise(a)))
    if qa.get("is_impossible") or not answers:
        if not spec.include_unanswerable:
            return SKIPPED
        answers = [spec.no_answer]
    return {"id": qa.get("id"), "instruction": spec.instruction or QA_INSTRUCTION,
            "input": f"Question: {qa['question'].strip()}\n\nContext: {context.strip()}", "output": answers[0],
            "group": title if spec.qa_group == "article" else paragraph_group,
            "references": json.dumps(answers, ensure_ascii=False)}


def raw_items(spec: SourceSpec) -> Iterator[tuple[int, Any]]:
    """The raw items of ``spec``, from the reader of its format."""
    kind = spec.resolved_format
    if kind == "squad":
        return _iter_squad(spec)
    if kind in ("alpaca", "sharegpt"):
        return _iter_json(spec.path)
    if kind in ("csv", "tsv"):
        return _iter_delimited(spec, "\t" if kind == "tsv" else ",")
    if kind == "parquet":
        return _iter_parquet(spec)
    return _iter_hf_disk(spec)


def location_unit(spec: SourceSpec) -> str:
    """How a record is located in messages: a line of JSONL/CSV, a record of a JSON list, a table row."""
    kind = spec.resolved_format
    if kind in ("parquet", "hf_disk"):
        return "row"
    if kind == "squad":
        return "question"
    if kind in ("alpaca", "sharegpt") and spec.path.is_file():
        with open(spec.path, "rb") as handle:
            if _is_json_list(spec.path, handle.read(4096)):
                return "record"
    return "line"
