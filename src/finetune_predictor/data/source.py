"""Where task records come from: the source spec, the format names, and the error that locates a bad record.

:class:`SourceSpec` says which file (or ``save_to_disk`` folder) holds the records, in which format, and how
its fields map onto the canonical ones; :class:`RecordError` names the file, the line (or row) and the reason
of a problem with one record or with the whole file. The readers (``readers.py``) and the reading into the
canonical table (``records.py``) both build on these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_predictor.errors import UserFacingError
from finetune_predictor.settings_schema import SettingsError

TEXT_FIELDS = ("instruction", "input", "output")
FORMATS = ("auto", "alpaca", "sharegpt", "csv", "tsv", "parquet", "hf_disk", "squad")
QA_GROUPS = ("article", "paragraph")
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
