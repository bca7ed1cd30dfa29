"""Reading task records from the formats users bring into one canonical table, and that table's hashes.

Formats: Alpaca JSON (a list) or JSONL (``instruction``/``input``/``output``, the MegaFake task-1
shape), ShareGPT / ``messages`` JSONL, CSV/TSV with a column mapping, Parquet, and a folder written by
``datasets.Dataset.save_to_disk``, and SQuAD JSON (``data[].paragraphs[].{context, qas[]}``) for
question answering; one reader per format in ``readers.py``, the source spec in ``source.py``. Every record
becomes a row of ``CANONICAL_COLUMNS``; ``references`` holds a JSON list of every accepted answer where a
record has more than its ``output`` (SQuAD), else is empty.

Every problem names the file, the line (or row) and the reason, so that a typo costs seconds, not a
GPU night. With ``on_invalid="quarantine"`` a bad record goes to the rejects list with that reason
instead of stopping the run; it is never dropped silently. Problems with the file as a whole (missing,
empty, unreadable, wrong shape) always stop the run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from finetune_predictor.data.readers import SKIPPED, location_unit, raw_items
from finetune_predictor.data.source import FORMATS, QA_GROUPS, TEXT_FIELDS, RecordError, SourceSpec
from finetune_predictor.settings_schema import SettingsError

# The records' one entry point: the rest of the project (settings_schema's choices among it) imports the source
# spec, its error and the format names from here, wherever they are defined.
__all__ = ["CANONICAL_COLUMNS", "FORMATS", "INVALID_POLICIES", "QA_GROUPS", "TEXT_FIELDS", "ReadResult", "RecordError",
           "SourceSpec", "canonical", "content_sha256", "exact_text", "normalised_text", "read_records",
           "reference_answers", "reference_lists"]

CANONICAL_COLUMNS = ["id", "instruction", "input", "output", "source", "group", "references"]
INVALID_POLICIES = ("error", "quarantine")


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
    unit = location_unit(spec)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    unmapped: Counter = Counter()
    skipped = 0
    group = spec.group or path.stem
    for number, item in raw_items(spec):
        try:
            if isinstance(item, RecordError):
                raise item
            if item is SKIPPED:
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
