"""The structured task: JSON parsing, schema compliance and field scores by hand, schema inference, the bundled
event-record generator, field corruption, stopping at the end of the object, and supervised tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune_predictor.data.synthetic_events import SCHEMA, generate_event, iter_events
from finetune_predictor.modeling.classical import nearest_target
from finetune_predictor.tasks import StructuredTask, build_task
from finetune_predictor.tasks.structured import first_json_object, infer_schema, object_complete

TASK = StructuredTask(tuple(SCHEMA.items()))


def test_first_object_is_found_around_other_text():
    assert first_json_object('Sure! {"a": {"b": 1}, "c": "}"} and more {"d": 2}') == {"a": {"b": 1}, "c": "}"}
    assert first_json_object("{broken {\"x\": 1}") == {"x": 1}
    assert first_json_object("[1, 2]") is None and first_json_object("no json") is None
    assert not object_complete('{"a": 1') and object_complete('{"a": 1}\nmore')


def test_metrics_by_hand():
    reference = json.dumps({"topic": "bus line", "place": "Marlo Creek", "figure": 120, "source": "Transit"})
    partly = json.dumps({"topic": "Bus  Line", "place": "Velden Falls", "figure": "120", "source": "Transit"})
    metrics = TASK.metrics([reference, reference, reference], [reference, partly, None])
    assert metrics["parse_rate"] == pytest.approx(2 / 3) and metrics["parse_failures"] == 1
    assert metrics["schema_compliance"] == pytest.approx(1 / 3)  # "120" is a string where an integer is due
    # Record 2: topic (case and spacing ignored), figure ("120" equals 120 as text) and source right: 3 of 4.
    assert metrics["field_accuracy"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["field_accuracy_place"] == pytest.approx(1 / 3)
    assert metrics["key_point_coverage"] == pytest.approx((1 + 0.75 + 0) / 3)


def test_schema_inferred_from_training_targets_or_declared():
    targets = [json.dumps({"a": 1, "b": "x"}), json.dumps({"a": 2.5, "b": "y", "c": True})]
    assert infer_schema(targets) == {"a": "number", "b": "string"}
    task = build_task({"task": "structured"}, targets)
    assert task.required == {"a": "number", "b": "string"}
    declared = build_task({"task": "structured", "schema": {"k": "integer"}}, targets)
    assert declared.required == {"k": "integer"}
    with pytest.raises(ValueError, match="unknown type"):
        build_task({"task": "structured", "schema": {"k": "int"}})
    with pytest.raises(ValueError, match="no training target parses as a JSON object"):
        build_task({"task": "structured"}, ["plain text"])


def test_generator_is_deterministic_and_its_targets_are_in_the_text():
    assert generate_event(5, 7) == generate_event(5, 7) and generate_event(5, 7) != generate_event(6, 7)
    for record in iter_events(200, 3):
        target = json.loads(record["output"])
        assert TASK.compliant(target)
        assert target["place"] in record["input"] and target["topic"] in record["input"]
        assert str(target["figure"]) in record["input"].replace(",", "")
        assert target["source"] == "unnamed" or target["source"] in record["input"]


def test_corruption_changes_one_field_of_the_share_asked():
    targets = [r["output"] for r in iter_events(40, 1)]
    corrupted = TASK.corrupt(targets, 0.25, np.random.default_rng(0))
    changed = [(json.loads(a), json.loads(b)) for a, b in zip(targets, corrupted, strict=True) if a != b]
    assert len(changed) == 10
    for before, after in changed:
        differing = {k for k in before if before[k] != after.get(k, object())}
        assert len(differing) == 1 and set(after) <= set(before)


def test_retrieval_baseline_returns_training_targets():
    records = list(iter_events(30, 2))
    import pandas as pd

    frame = pd.DataFrame(records)
    answers = nearest_target(frame.head(20), frame.tail(10), TASK)
    assert set(answers) <= set(frame.head(20)["output"])


def test_generation_stops_at_the_end_of_the_object(tiny_session):
    from finetune_predictor.modeling.scoring import generate_answers

    model = tiny_session.load_model()
    records = [{"instruction": "x", "input": "y"}] * 2
    free = generate_answers(model, tiny_session.formatter, records, max_new_tokens=6)
    calls = []

    def stop(text: str) -> bool:
        calls.append(text)
        return True  # complete after the first token

    stopped = generate_answers(model, tiny_session.formatter, records, max_new_tokens=6, stop=stop)
    assert calls and all(len(tiny_session.tokenizer(t)["input_ids"]) <= 1 for t in stopped)
    assert len(free) == 2


def test_key_point_coverage_matches_whole_values_not_substrings():
    reference = json.dumps({"topic": "x", "place": "y", "figure": 12, "source": "z"})
    answer = json.dumps({"topic": "x", "place": "y", "figure": 1245, "source": "z"})
    assert TASK.metrics([reference], [answer])["key_point_coverage"] == 0.75
