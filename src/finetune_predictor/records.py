"""Reading Alpaca-shaped records ({"instruction", "input", "output"}) into the canonical table.

Every problem names the file, the line and the reason, so that a typo costs seconds, not a GPU night.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

CANONICAL_COLUMNS = ["id", "instruction", "input", "output", "source"]
REQUIRED_FIELDS = ("instruction", "output")


class RecordError(ValueError):
    """A record that cannot be used, located by file and line."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


def _iter_raw(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(path, None, "file not found") from None
    except IsADirectoryError:
        raise RecordError(path, None, "is a folder, expected a .json or .jsonl file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise RecordError(path, line, f"not valid UTF-8 (byte {error.start})") from None
    if not text.strip():
        raise RecordError(path, None, "file is empty")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordError(path, error.lineno, f"malformed JSON: {error.msg}") from None
        if not isinstance(data, list):
            raise RecordError(path, None, "a .json file must hold a list of records")
        # Records of a JSON list have no line of their own: report the 1-based record index instead.
        yield from ((index + 1, item) for index, item in enumerate(data))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise RecordError(path, number, f"malformed JSON line: {error.msg}") from None


def read_alpaca_records(path: str | Path, labels: Iterable[str] | None = None) -> pd.DataFrame:
    """Read an Alpaca JSON list or JSONL file; validate fields, types and (if given) labels."""
    path = Path(path)
    allowed = {label for label in labels} if labels is not None else None
    rows = []
    for number, item in _iter_raw(path):
        if not isinstance(item, dict):
            raise RecordError(path, number, f"expected a JSON object, got {type(item).__name__}")
        for name in REQUIRED_FIELDS:
            if name not in item:
                raise RecordError(path, number, f"missing field {name!r}")
        for name in ("instruction", "input", "output"):
            value = item.get(name, "")
            if value is None and name == "input":
                value = ""
            if not isinstance(value, str):
                raise RecordError(path, number, f"field {name!r} must be a string, got {type(value).__name__}")
        if not item["output"].strip():
            raise RecordError(path, number, "empty 'output'")
        if not (item["instruction"].strip() or (item.get("input") or "").strip()):
            raise RecordError(path, number, "empty text: both 'instruction' and 'input' are blank")
        output = item["output"].strip()
        if allowed is not None and output not in allowed:
            raise RecordError(path, number, f"unknown label {output!r}; expected one of {sorted(allowed)}")
        rows.append({
            "id": str(item.get("id", f"{path.name}:{number}")),
            "instruction": item["instruction"],
            "input": item.get("input") or "",
            "output": output,
            "source": path.name,
        })
    if not rows:
        raise RecordError(path, None, "no records")
    return pd.DataFrame(rows, columns=CANONICAL_COLUMNS)


def normalised_text(instruction: str, input_text: str) -> str:
    """Text used to detect duplicates and train/test leaks: case- and whitespace-insensitive."""
    return " ".join(f"{instruction} {input_text}".lower().split())


def content_sha256(frame: pd.DataFrame) -> str:
    """Order-sensitive hash of the fields a model sees, identifying a train or test set exactly."""
    digest = hashlib.sha256()
    for row in frame[["instruction", "input", "output"]].itertuples(index=False):
        digest.update(json.dumps(list(row), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
