"""The formatter shared by training and inference: supervised tokens are exactly answer + end of turn."""

from __future__ import annotations

import json

import pytest

from finetune_predictor.data.records import SourceSpec, read_records
from finetune_predictor.data.synthetic_events import iter_events
from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.modeling.chat_format import PromptFormatter
from finetune_predictor.modeling.training import build_training_rows


def _supervised_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])


def _assert_answer_only(tokenizer, records, max_length: int = 512) -> list[dict]:
    """Every record's supervised tokens decode to exactly its target plus the end-of-turn token."""
    formatter = PromptFormatter(tokenizer, max_length=max_length)
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    for record, row in zip(records, rows, strict=True):
        assert _supervised_text(tokenizer, row) == record["output"] + "<|im_end|>"
    return rows


def test_supervised_tokens_of_qa_and_structured_targets(tokenizer, squad_file):
    _assert_answer_only(tokenizer, read_records(SourceSpec(squad_file, format="squad")).records.head(40)
                        .to_dict("records"))
    _assert_answer_only(tokenizer, list(iter_events(30, 5)))  # JSON objects, braces and quotes included


def test_supervised_tokens_are_answer_plus_end_of_turn(tokenizer):
    records = list(iter_articles(40, seed=7))
    rows = _assert_answer_only(tokenizer, records)
    for row in rows:
        # Supervised tokens are one contiguous block at the end of the sequence.
        first = next(i for i, label in enumerate(row["labels"]) if label != -100)
        assert all(label != -100 for label in row["labels"][first:])
        assert row["labels"][first:] == row["input_ids"][first:]


def test_supervised_tokens_on_real_liar_records(tokenizer, liar_dir):
    lines = (liar_dir / "liar_train_alpaca.jsonl").read_text().splitlines()[:50]
    _assert_answer_only(tokenizer, [json.loads(line) for line in lines], max_length=256)


def test_inference_prompt_is_the_training_prefix(tokenizer):
    formatter = PromptFormatter(tokenizer, max_length=512)
    record = next(iter_articles(1, seed=3))
    row = formatter.training_example(record["instruction"], record["input"], record["output"])
    prompt = formatter.prompt_ids(record["instruction"], record["input"])
    assert row["input_ids"][: len(prompt)] == prompt
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")


def test_long_input_is_cut_but_answer_kept(tokenizer):
    formatter = PromptFormatter(tokenizer, max_length=64)
    row = formatter.training_example("Classify.", "word " * 500, "legitimate")
    assert len(row["input_ids"]) <= 64
    assert _supervised_text(tokenizer, row) == "legitimate<|im_end|>"


def test_instruction_longer_than_max_length_is_an_error(tokenizer):
    formatter = PromptFormatter(tokenizer, max_length=16)
    with pytest.raises(ValueError, match="longer than max_length"):
        formatter.training_example("Classify this very long instruction " * 10, "x", "fake")


def test_base_model_without_template_uses_fallback(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    formatter = PromptFormatter(bare, max_length=128)
    row = formatter.training_example("Classify.", "Some text.", "fake")
    assert _supervised_text(bare, row) == "fake" + bare.eos_token
    assert "### Response:" in bare.decode(row["input_ids"])


def test_truncation_cuts_only_the_input_and_is_counted(tokenizer):
    """The old fallback sliced the prompt's tail when re-encoding overshot, which could cut the assistant
    header the answer follows; now only the input shrinks, and every shortened prompt is counted."""
    formatter = PromptFormatter(tokenizer, max_length=64)
    header = formatter.prompt_ids("Classify.", "")[-3:]
    long_input = " ".join(f"word{i}," for i in range(400))
    ids = formatter.prompt_ids("Classify.", long_input, reserve=5)
    assert len(ids) <= 64 - 5 and ids[-3:] == header
    assert formatter.truncated_prompts == 1
    formatter.prompt_ids("Classify.", "short")
    assert formatter.truncated_prompts == 1
    with pytest.raises(ValueError, match="instruction alone"):
        formatter.prompt_ids("Classify " * 200, long_input)
