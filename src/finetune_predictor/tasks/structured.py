"""Structured answers: the target is a JSON object. Judged on whether the answer parses, follows the schema
(required keys with their types, from ``data.schema`` or inferred from the training targets), and how many
of the reference fields it gets right."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null", "any")
_DECODER = json.JSONDecoder()


def json_type(value: Any) -> str:
    """The JSON Schema type name of a decoded value (an integer is also a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_ok(value: Any, expected: str) -> bool:
    actual = json_type(value)
    return expected == "any" or actual == expected or (expected == "number" and actual == "integer")


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (text around it is ignored), or None."""
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return value if isinstance(value, dict) else None
    return None


def object_complete(text: str) -> bool:
    """True once ``text`` holds a complete first JSON object: generation can stop there."""
    return first_json_object(text) is not None


def _value_text(value: Any) -> str:
    """A field value as compared: strings lower-cased with spacing collapsed, other values as compact JSON."""
    if isinstance(value, str):
        return " ".join(value.lower().split())
    return json.dumps(value, sort_keys=True, separators=(",", ":")).lower()


def infer_schema(targets: Iterable[str]) -> dict[str, str]:
    """Required keys (in every training target) with their type (``any`` where the targets disagree)."""
    objects = [first_json_object(str(t)) for t in targets]
    objects = [o for o in objects if o is not None]
    if not objects:
        raise ValueError("data.task=structured: no training target parses as a JSON object; the output field must "
                         "hold one (for example {\"topic\": \"...\"}), or set data.schema")
    required = set(objects[0]).intersection(*objects[1:])
    schema = {}
    for key in sorted(required, key=list(objects[0]).index):
        types = {json_type(o[key]) for o in objects}
        schema[key] = types.pop() if len(types) == 1 else ("number" if types == {"integer", "number"} else "any")
    return schema


@dataclass(frozen=True)
class StructuredTask:
    """``schema`` maps each required key to its JSON type."""

    schema: tuple[tuple[str, str], ...]
    name: str = "structured"
    positive_label: str | None = None
    primary_metric: ClassVar[str] = "field_accuracy"  # logged as baseline_primary / finetuned_primary
    max_new_tokens: ClassVar[int] = 128  # an upper bound: generation stops at the end of the object
    # What features() returns.
    feature_names: ClassVar[tuple[str, ...]] = (
        "mf_struct_schema_compliance", "mf_struct_key_set_regularity", "mf_struct_fields_mean")
    default_test_split: ClassVar[str] = "record"

    def __post_init__(self) -> None:
        if not self.schema:
            raise ValueError("data.schema (or the training targets) must name at least one required key")
        bad = {key: kind for key, kind in self.schema if kind not in JSON_TYPES}
        if bad:
            raise ValueError(f"data.schema has unknown type(s) {bad}; types: {', '.join(JSON_TYPES)}")

    @classmethod
    def from_params(cls, data_params: Mapping[str, Any], seen_targets: Iterable[str] | None = None) -> StructuredTask:
        declared = data_params.get("schema")
        if declared:
            if not isinstance(declared, Mapping):
                raise ValueError(f"data.schema must map each key to a JSON type, got {declared!r}")
            return cls(tuple((str(k), str(v)) for k, v in declared.items()))
        if seen_targets is None:
            raise ValueError("data.task=structured needs data.schema or training targets to infer it from")
        return cls(tuple(infer_schema(seen_targets).items()))

    @property
    def required(self) -> dict[str, str]:
        return dict(self.schema)

    def target(self, record: dict[str, Any]) -> str:
        return str(record["output"])

    def candidates(self) -> None:
        return None

    def stop(self, text: str) -> bool:
        """Generation may stop: the first object is complete."""
        return object_complete(text)

    def parse(self, generated: str) -> str | None:
        """The first JSON object of the generation, re-serialised; None when there is none."""
        value = first_json_object(generated)
        return json.dumps(value, ensure_ascii=False) if value is not None else None

    def compliant(self, value: dict[str, Any] | None) -> bool:
        return value is not None and all(key in value and _type_ok(value[key], kind) for key, kind in self.schema)

    def metrics(self, y_true: Sequence[Any], y_pred: Sequence[str | None],
                scores: np.ndarray | None = None) -> dict[str, Any]:
        """Parse rate, schema compliance, field accuracy (share of reference fields with an equal value, per
        record), record exact match (every reference field right), and key-point coverage (share of reference
        values found among the answer's values, under any key). A parse failure scores 0 on each."""
        if len(y_true) != len(y_pred):
            raise ValueError(f"{len(y_true)} references but {len(y_pred)} predictions")
        if not len(y_true):
            raise ValueError("No examples to score")
        references = [first_json_object(str(t)) or {} for t in y_true]
        predictions = [first_json_object(p) if p else None for p in y_pred]
        field, exact, coverage = [], [], []
        for reference, predicted in zip(references, predictions, strict=True):
            predicted = predicted or {}
            hits = [key in predicted and _value_text(predicted[key]) == _value_text(value)
                    for key, value in reference.items()]
            answer_values = {_value_text(v) for v in predicted.values()}
            found = [_value_text(value) in answer_values for value in reference.values()]
            field.append(float(np.mean(hits)) if hits else 0.0)
            exact.append(float(all(hits) and bool(hits)))
            coverage.append(float(np.mean(found)) if found else 0.0)
        parsed = np.array([p is not None for p in predictions])
        result: dict[str, Any] = {
            "n": len(references), "parse_rate": float(parsed.mean()),
            "parse_failures": int((~parsed).sum()), "parse_failure_rate": float((~parsed).mean()),
            "schema_compliance": float(np.mean([self.compliant(p) for p in predictions])),
            "field_accuracy": float(np.mean(field)), "exact_match": float(np.mean(exact)),
            "key_point_coverage": float(np.mean(coverage)),
        }
        for key in self.required:
            result[f"field_accuracy_{key}"] = float(np.mean(
                [key in (p or {}) and key in r and _value_text(p[key]) == _value_text(r[key])
                 for r, p in zip(references, predictions, strict=True)]))
        return result

    def corrupt(self, targets: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
        """Corrupted records: for a share ``rate`` of the targets, one field is dropped or (as often) given
        the value that field has in another record."""
        out = list(targets)
        objects = [first_json_object(t) for t in targets]
        for index in rng.choice(len(out), size=round(len(out) * rate), replace=False):
            value = dict(objects[index] or {})
            if not value:
                continue
            key = str(rng.choice(list(value)))
            donors = [o[key] for o in objects if o and key in o and _value_text(o[key]) != _value_text(value[key])]
            if donors and rng.random() < 0.5:
                value[key] = donors[int(rng.integers(len(donors)))]
            else:
                del value[key]
            out[index] = json.dumps(value, ensure_ascii=False)
        return out

    def features(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Schema regularity: the share of targets that follow the schema, the share that share the most
        common key set, and the mean number of fields."""
        objects = [first_json_object(self.target(record)) for record in records]
        key_sets = Counter(tuple(sorted(o)) for o in objects if o is not None)
        return {"mf_struct_schema_compliance": float(np.mean([self.compliant(o) for o in objects])),
                "mf_struct_key_set_regularity": key_sets.most_common(1)[0][1] / len(objects) if key_sets else 0.0,
                "mf_struct_fields_mean": float(np.mean([len(o) if o else 0 for o in objects]))}
