"""Left-padded batches and the answer-window loss: same loss as the full sequence, fewer logits."""

from __future__ import annotations

import pytest
import torch

from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.modeling.batching import (
    IGNORE_INDEX,
    LeftPadCollator,
    answer_window,
    left_pad,
    position_ids_of,
)
from finetune_predictor.modeling.hardware import choose_compute_plan
from finetune_predictor.modeling.model_session import load_causal_lm
from finetune_predictor.modeling.training import build_training_rows, train_lora
from finetune_predictor.settings_schema import TrainingSettings


def test_left_pad_and_positions():
    ids = left_pad([[5, 6, 7], [8]], pad_value=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    batch = LeftPadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                             {"input_ids": [8], "labels": [8]}])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert position_ids_of(torch.tensor([[0, 1, 1, 1]])).tolist() == [[0, 0, 1, 2]]


@pytest.mark.parametrize(("labels", "expected"), [
    ([[-100, -100, -100, 4, 5]], 3),            # first supervised column 3 -> logits from column 2
    ([[-100, -100, 3, 4, 5], [-100] * 4 + [5]], 4),
    ([[1, 2, 3]], 3),                           # supervised from column 0: the whole row (capped)
    ([[-100, -100]], 1),                        # nothing supervised
])
def test_answer_window(labels, expected):
    assert answer_window(torch.tensor(labels)) == expected


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_session):
    model = load_causal_lm(str(tiny_model_dir), choose_compute_plan("fp32"))
    return model, tiny_session.formatter


def test_answer_window_loss_equals_the_per_token_definition(tiny):
    model, formatter = tiny
    records = list(iter_articles(6, seed=2))
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    batch = LeftPadCollator(formatter.tokenizer.pad_token_id)(rows)
    keep = answer_window(batch["labels"])
    assert keep < batch["input_ids"].shape[1] // 4  # a few columns of a long prompt
    with torch.no_grad():
        windowed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"], labels=batch["labels"][:, -keep:],
                         logits_to_keep=keep).loss
        # The definition: each row alone, unpadded, mean negative log-likelihood over supervised tokens.
        total, count = 0.0, 0
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            for position, label in enumerate(row["labels"][1:]):
                if label != IGNORE_INDEX:
                    total -= log_probs[position, label].item()
                    count += 1
    assert windowed.item() == pytest.approx(total / count, rel=1e-4)


def test_answer_window_and_stock_trl_give_the_same_first_loss(tiny_session, tmp_path):
    formatter = tiny_session.formatter
    records = list(iter_articles(8, seed=9))
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    first_losses = {}
    for window in ("answer", "full"):
        settings = TrainingSettings.from_params({
            "max_steps": 1, "per_device_train_batch_size": 8, "precision": "fp32", "learning_rate": 1e-2,
            "loss_window": window, "warmup_ratio": 0.0, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
        result = train_lora(tiny_session, rows, settings, tmp_path / window)
        first_losses[window] = result.loss_history[0]["loss"]
    assert first_losses["answer"] == pytest.approx(first_losses["full"], rel=1e-3)


def _trainer_batches(session, rows, tmp_path, grouped: bool) -> list[dict[str, torch.Tensor]]:
    """One epoch of batches as the project's trainer builds them (its sampler and collator)."""
    from finetune_predictor.modeling.sft_trainer import build_trainer

    settings = TrainingSettings.from_params({"per_device_train_batch_size": 4, "precision": "fp32",
                                             "num_train_epochs": 1, "group_by_length": grouped})
    trainer = build_trainer(session, rows, settings, tmp_path / str(grouped))
    return list(trainer.get_train_dataloader())


def test_length_grouped_batches_pad_less_and_keep_every_answer_only_loss_mask(tiny_session, tmp_path):
    """Grouping by length changes which rows share a batch, never a row's tokens or its loss mask: every row
    comes back once with labels -100 on its prompt (and padding) and its answer + end-of-turn supervised."""
    formatter = tiny_session.formatter
    records = list(iter_articles(64, seed=4))
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    expected = sorted((tuple(row["input_ids"]), tuple(row["labels"])) for row in rows)
    padding = {}
    for grouped in (False, True):
        batches = _trainer_batches(tiny_session, rows, tmp_path, grouped)
        seen, padded, computed = [], 0, 0
        for batch in batches:
            mask = batch["attention_mask"]
            padded, computed = padded + int((mask == 0).sum()), computed + mask.numel()
            assert (batch["labels"][mask == 0] == IGNORE_INDEX).all()  # padding is never supervised
            for ids, labels, row_mask in zip(batch["input_ids"], batch["labels"], mask, strict=True):
                real = row_mask.bool()
                seen.append((tuple(ids[real].tolist()), tuple(labels[real].tolist())))
        assert sorted(seen) == expected, grouped
        for ids, labels in seen:
            supervised = [label for label in labels if label != IGNORE_INDEX]
            assert list(ids[-len(supervised):]) == supervised  # the answer window, at the end of the row
        padding[grouped] = padded / computed
    assert padding[True] < padding[False] / 2


def test_padding_share_counts_the_padded_positions_of_a_left_padded_batch():
    from finetune_predictor.modeling.batching import padding_share

    assert padding_share([[1, 2, 3], [4]]) == pytest.approx(2 / 6)
    assert padding_share([[1, 2], [3, 4]]) == 0.0 and padding_share([]) == 0.0
