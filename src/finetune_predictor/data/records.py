"""Reading task records from the formats users bring into one canonical table.

Formats: Alpaca JSON (a list) or JSONL (``instruction``/``input``/``output``, the MegaFake task-1
shape), ShareGPT / ``messages`` JSONL, CSV/TSV with a column mapping, Parquet, and a folder written by
``datasets.Dataset.save_to_disk``, and SQuAD JSON (``data[].paragraphs[].{context, qas[]}``) for
question answering. Every record becomes a row of ``CANONICAL_COLUMNS``; ``references`` holds a JSON list
of every accepted answer where a record has more than its ``output`` (SQuAD), else is empty.

Every problem names the file, the line (or row) and the reason, so that a typo costs seconds, not a
GPU night. With ``on_invalid="quarantine"`` a bad record goes to the rejects list with that reason
instead of stopping the run; it is never dropped silently. Problems with the file as a whole (missing,
empty, unreadable, wrong shape) always stop the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.errors import UserFacingError
from finetune_predictor.settings_schema import SettingsError

# SQuAD's answer normalisation (its evaluation script's): the reader drops answers it leaves empty, the QA task
# compares answers under it.
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def squad_normalise(text: str) -> str:
    """The SQuAD evaluation's normalisation: lower case, punctuation and the articles a/an/the removed,
    whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())

CANONICAL_COLUMNS = ["id", "instruction", "input", "output", "source", "group", "references"]
TEXT_FIELDS = ("instruction", "input", "output")
FORMATS = ("auto", "alpaca", "sharegpt", "csv", "tsv", "parquet", "hf_disk", "squad")
QA_INSTRUCTION = "Answer the question with a short span copied from the context."
QA_GROUPS = ("article", "paragraph")
INVALID_POLICIES = ("error", "quarantine")
_SUFFIX_FORMATS = {".json": "alpaca", ".jsonl": "alpaca", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


DEFAULT_MAX_RECORD_CHARS = 100_000
_RECORD_FIX = ("correct the record, or set data.on_invalid=quarantine to set bad records aside "
               "(listed in data/08_reporting/rejects.csv) and train on the rest")
_FILE_FIX = "check data.path / data.test_path and data.format (see README: your own data)"


class RecordError(ValueError, UserFacingError):
    """A record (or file) that cannot be used, located by file and line or row.

    ``str(error)`` is ``file:line: reason``; as a :class:`UserFacingError` its ``where`` is the location and
    ``fix`` the remedy (``fix`` given, or the generic one for a record or for a whole file).
    """

    def __init__(self, path: str | Path, line: int | None, reason: str, unit: str = "line",
                 fix: str | None = None) -> None:
        where = f"{path}:{line}" if unit == "line" or line is None else f"{path} {unit} {line}"
        where = where if line is not None else str(path)
        UserFacingError.__init__(self, reason, where, fix or (_RECORD_FIX if line is not None else _FILE_FIX),
                                 message=f"{where}: {reason}")
        self.path, self.line, self.reason, self.unit = str(path), line, reason, unit


@dataclass(frozen=True)
class SourceSpec:
    """Where records come from and how their fields map onto the canonical ones.

    ``columns`` maps canonical fields (``id``, ``instruction``, ``input``, ``output``, ``group``) to a
    column name, or to a 0-based position for files without a header. ``instruction`` is used for
    records whose source has none (CSV of statements). ``label_map`` maps raw labels to task labels;
    with a map, raw labels outside it are dropped and counted (e.g. LIAR's ``half-true``).
    """

    path: Path
    format: str = "auto"
    columns: Mapping[str, str | int] = field(default_factory=dict)
    header: bool = True
    instruction: str | None = None
    label_map: Mapping[str, str] | None = None
    split: str = "train"
    group: str | None = None
    # SQuAD: unanswerable questions kept (with ``no_answer`` as their target), and the group a question
    # belongs to (its article or its paragraph), which a grouped test split keeps out of training.
    include_unanswerable: bool = False
    no_answer: str = "unanswerable"
    qa_group: str = "article"
    # Longer records (instruction + input + output, in characters) are refused: far beyond any model's
    # max_length, they are almost always a broken export (a whole file in one field). None: no limit.
    max_record_chars: int | None = DEFAULT_MAX_RECORD_CHARS

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.format not in FORMATS:
            raise SettingsError([("data.format", f"data.format must be one of {FORMATS}, got {self.format!r}")])
        if self.qa_group not in QA_GROUPS:
            raise SettingsError([("data.qa.group_by",
                                  f"data.qa.group_by must be one of {QA_GROUPS}, got {self.qa_group!r}")])
        unknown = sorted(set(self.columns) - {"id", *TEXT_FIELDS, "group"})
        if unknown:
            raise SettingsError([("data.columns", f"data.columns has unknown field(s) {unknown}; "
                                                  "known: id, instruction, input, output, group")])

    @property
    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        if self.path.is_dir():
            return "hf_disk"
        return _SUFFIX_FORMATS.get(self.path.suffix.lower(), "alpaca")

    @classmethod
    def from_params(cls, data: Mapping[str, Any], path: str | Path) -> SourceSpec:
        label_map = data.get("label_map") or None
        qa = data.get("qa") or {}
        return cls(
            path=Path(path),
            format=str(data.get("format") or "auto"),
            columns=dict(data.get("columns") or {}),
            header=bool(data.get("header", True)),
            instruction=data.get("instruction"),
            label_map={str(k): str(v) for k, v in label_map.items()} if label_map else None,
            split=str(data.get("split") or "train"),
            group=data.get("group"),
            include_unanswerable=bool(qa.get("include_unanswerable", False)),
            no_answer=str(qa.get("no_answer") or "unanswerable"),
            qa_group=str(qa.get("group_by") or "article"),
            max_record_chars=(int(data["max_record_chars"]) if data.get("max_record_chars") is not None else None)
            if "max_record_chars" in data else DEFAULT_MAX_RECORD_CHARS,
        )


@dataclass
class ReadResult:
    """Valid records, rejected ones (quarantine policy) and raw labels dropped by the label map."""

    records: pd.DataFrame
    rejects: list[dict[str, Any]]
    unmapped_labels: Counter
    unanswerable_skipped: int = 0  # SQuAD questions without an answer, left out by data.qa.include_unanswerable

    def summary(self) -> dict[str, Any]:
        return {
            "records_read": len(self.records),
            "records_rejected": len(self.rejects),
            "rejected_by_reason": dict(Counter(_reason_kind(r["reason"]) for r in self.rejects)),
            "labels_dropped_by_label_map": dict(self.unmapped_labels),
            "unanswerable_skipped": self.unanswerable_skipped,
        }


def _reason_kind(reason: str) -> str:
    return re.split(r"[:;(]", reason, maxsplit=1)[0].strip()


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
    """One SQuAD question as canonical fields, ``_SKIPPED`` for an unanswerable question left out, or the
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
            return _SKIPPED
        answers = [spec.no_answer]
    return {"id": qa.get("id"), "instruction": spec.instruction or QA_INSTRUCTION,
            "input": f"Question: {qa['question'].strip()}\n\nContext: {context.strip()}", "output": answers[0],
            "group": title if spec.qa_group == "article" else paragraph_group,
            "references": json.dumps(answers, ensure_ascii=False)}


def _raw_items(spec: SourceSpec) -> Iterator[tuple[int, Any]]:
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


# --- one raw item -> canonical fields --------------------------------------------------------------------

_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                 "system": "system"}


def _from_messages(item: dict[str, Any], fail: Any) -> dict[str, Any]:
    turns = item.get("messages", item.get("conversations"))
    if not isinstance(turns, list) or not turns:
        fail("missing field 'messages' (or 'conversations'): a non-empty list of turns")
    users, assistants = [], []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            fail(f"turn {index} must be an object, got {type(turn).__name__}")
        role = _ROLE_ALIASES.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None:
            fail(f"turn {index} has unknown role {turn.get('role', turn.get('from'))!r}")
        if not isinstance(content, str):
            fail(f"turn {index} content must be a string, got {type(content).__name__}")
        if role == "user":
            users.append(content)
        elif role == "assistant":
            assistants.append(content)
    if len(users) != 1 or len(assistants) != 1:
        fail(f"expected one user turn and one assistant turn, got {len(users)} and {len(assistants)}")
    return {"id": item.get("id"), "instruction": users[0], "input": "", "output": assistants[0],
            "group": item.get("group")}


def _from_mapped(item: Any, spec: SourceSpec, fail: Any) -> dict[str, Any]:
    columns = dict(spec.columns)
    if isinstance(item, list) and spec.resolved_format in ("csv", "tsv"):  # no header: positions
        out: dict[str, Any] = {}
        for name, position in columns.items():
            if not isinstance(position, int):
                fail(f"data.columns.{name} must be a 0-based column position for a file without header")
            out[name] = item[position] if position < len(item) else None
            if position >= len(item):
                fail(f"has {len(item)} columns; data.columns.{name} asks for column {position}")
        if "output" not in out:
            fail("data.columns.output is required for a file without header")
        return out
    if not isinstance(item, dict):
        fail(f"expected a JSON object, got {type(item).__name__}")
    return {name: item.get(columns.get(name, name)) if columns.get(name, name) in item else _MISSING
            for name in ("id", *TEXT_FIELDS, "group")}


_MISSING = object()
_SKIPPED = object()  # an item the reader leaves out by setting (not an error)


def _canonical(item: Any, spec: SourceSpec, fail: Any) -> dict[str, Any]:
    if spec.resolved_format == "squad":
        return item
    if spec.resolved_format == "sharegpt" or (isinstance(item, dict) and not spec.columns
                                               and ("messages" in item or "conversations" in item)):
        fields_ = _from_messages(item, fail)
    else:
        fields_ = _from_mapped(item, spec, fail)
    if fields_.get("instruction", _MISSING) is _MISSING and spec.instruction is not None:
        fields_["instruction"] = spec.instruction
    for name in ("instruction", "output"):
        if fields_.get(name, _MISSING) is _MISSING:
            column = spec.columns.get(name, name)
            found = f"; its fields: {', '.join(map(str, item))}" if isinstance(item, dict) else ""
            fail((f"missing field {column!r}" if column == name else f"missing field {name!r} (column {column!r})")
                 + f"{found} (map yours with data.columns.{name})")
    for name in TEXT_FIELDS:
        value = fields_.get(name, _MISSING)
        if (value is _MISSING or value is None) and name == "input":
            fields_[name] = ""
            continue
        if not isinstance(fields_[name], str):
            fail(f"field {name!r} must be a string, got {type(fields_[name]).__name__}")
    return fields_


def read_records(spec: SourceSpec, labels: Iterable[str] | None = None, on_invalid: str = "error") -> ReadResult:
    """Read, validate and normalise every record of ``spec`` into the canonical table."""
    if on_invalid not in INVALID_POLICIES:
        raise SettingsError([("data.on_invalid",
                              f"data.on_invalid must be one of {INVALID_POLICIES}, got {on_invalid!r}")])
    allowed = set(labels) if labels is not None else None
    path = spec.path
    unit = _location_unit(spec)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    unmapped: Counter = Counter()
    skipped = 0
    group = spec.group or path.stem
    for number, item in _raw_items(spec):
        try:
            if isinstance(item, RecordError):
                raise item
            if item is _SKIPPED:
                skipped += 1
                continue

            def fail(reason: str, _number: int = number) -> None:
                raise RecordError(path, _number, reason, unit)

            fields_ = _canonical(item, spec, fail)
            output = _checked_output(fields_, spec, allowed, fail)
            if output is None:
                unmapped[fields_["output"].strip()] += 1
                continue
        except RecordError as error:
            if on_invalid == "error":
                raise
            rejects.append({"file": str(path), "location": f"{error.unit} {number}", "reason": error.reason,
                            "raw": _raw_text(item)})
            continue
        record_id = fields_.get("id")
        rows.append({
            "id": str(record_id) if record_id not in (None, "", _MISSING) else f"{path.name}:{number}",
            "instruction": fields_["instruction"],
            "input": fields_["input"],
            "output": output,
            "source": path.name,
            "group": str(fields_["group"]) if fields_.get("group") not in (None, "", _MISSING) else group,
            "references": fields_.get("references") or "",
        })
    if not rows:
        raise RecordError(path, None, f"no usable records{_dropped_detail(rejects, unmapped, skipped)}")
    records = pd.DataFrame(rows, columns=CANONICAL_COLUMNS)
    duplicated_ids = records["id"].duplicated()
    if duplicated_ids.any():
        raise RecordError(path, None, f"duplicate id {records['id'][duplicated_ids].iloc[0]!r}: ids must be unique")
    return ReadResult(records, rejects, unmapped, skipped)


def _checked_output(fields_: dict[str, Any], spec: SourceSpec, allowed: set[str] | None, fail: Any) -> str | None:
    """The record's task target after the label map (None: a raw label the map leaves out), or ``fail``
    with why the record cannot be used: empty text, abnormal length, a label the task does not know."""
    if not fields_["output"].strip():
        fail("empty 'output'")
    if not (fields_["instruction"].strip() or fields_["input"].strip()):
        fail("empty text: both 'instruction' and 'input' are blank")
    length = sum(len(fields_[name]) for name in TEXT_FIELDS)
    if spec.max_record_chars is not None and length > spec.max_record_chars:
        fail(f"abnormally long record: {length:,} characters, over data.max_record_chars={spec.max_record_chars:,} "
             "(raise data.max_record_chars, or set it to null, if records this long are meant)")
    output = fields_["output"].strip()
    if spec.label_map is not None:
        if output not in spec.label_map:
            return None
        output = spec.label_map[output]
    if allowed is not None and output not in allowed:
        hint = " (add it to data.label_map)" if spec.label_map is None else " (data.label_map maps to it)"
        fail(f"unknown label {output!r}; expected one of {sorted(allowed)}{hint}")
    return output


def _dropped_detail(rejects: list[dict[str, Any]], unmapped: Counter, skipped: int) -> str:
    """Why a file gave no usable record: what was rejected, dropped by the label map, or left out."""
    detail = f"; {len(rejects)} rejected" if rejects else ""
    detail += f"; {sum(unmapped.values())} dropped by data.label_map" if unmapped else ""
    if skipped:
        detail += f"; {skipped} unanswerable questions left out (data.qa.include_unanswerable=true keeps them)"
    return detail


def _location_unit(spec: SourceSpec) -> str:
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


def _raw_text(item: Any) -> str:
    if isinstance(item, RecordError):
        return ""
    try:
        return json.dumps(item, ensure_ascii=False, default=str)[:2000]
    except (TypeError, ValueError):
        return repr(item)[:2000]


def normalised_text(instruction: str, input_text: str) -> str:
    """Text used to detect near duplicates and train/test leaks: case, punctuation and spacing ignored."""
    text = f"{instruction} {input_text}".lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def exact_text(instruction: str, input_text: str) -> str:
    return f"{instruction}\u241f{input_text}"


def content_sha256(frame: pd.DataFrame) -> str:
    """Order-sensitive hash of the fields a model sees, identifying a train or test set exactly."""
    digest = hashlib.sha256()
    for row in frame[["instruction", "input", "output"]].itertuples(index=False):
        digest.update(json.dumps(list(row), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def reference_answers(record: Mapping[str, Any]) -> list[str]:
    """Every accepted answer of a record: its ``references`` (a JSON list, SQuAD), else its output."""
    raw = record.get("references")
    return json.loads(raw) if isinstance(raw, str) and raw else [str(record["output"])]


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly the canonical columns; tables written before ``references`` existed (an older
    prepared sweep, a hand-made frame) get it empty."""
    if "references" not in frame:
        frame = frame.assign(references="")
    return frame[CANONICAL_COLUMNS]


def reference_lists(frame: pd.DataFrame) -> list[list[str]] | None:
    """Every record's accepted answers when the records carry more than their output (SQuAD), else None."""
    if "references" not in frame or not frame["references"].astype(bool).any():
        return None
    return [reference_answers(record) for record in frame.to_dict("records")]
