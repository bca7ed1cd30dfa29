"""Left-padded batches, shared by training, label scoring, generation and probes.

Left padding puts every prompt's end (and so every answer) at the same columns, which lets training
compute logits only for the trailing window that holds the answers (see ``answer_window``), and lets
inference read the next-token distribution at column -1. Position ids count real tokens only, so a
padded row sees the same positions as the unpadded sequence (models with absolute positions need it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


def left_pad(sequences: Sequence[Sequence[int]], pad_value: int) -> torch.Tensor:
    """A ``(len(sequences), longest)`` long tensor with each sequence right-aligned."""
    width = max(len(seq) for seq in sequences)
    out = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            out[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def attention_mask_of(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    return left_pad([[1] * len(seq) for seq in sequences], 0)


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each left-padded row (pads get 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, group_by_length: bool = True) -> list[list[int]]:
    """Row indices in batches of ``batch_size``; with ``group_by_length``, longest first (a stable sort).

    A left-padded batch costs its longest row times its size: sorting before batching puts prompts of
    similar length together, so little of the compute is padding. The caller writes each result back at
    its index, which restores the input order. Longest first makes the batch that needs the most memory
    the first one, so a batch size that does not fit fails at once rather than at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if group_by_length else list(range(len(lengths)))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def padding_share(sequences: Sequence[Sequence[int]]) -> float:
    """Share of a left-padded batch's computed tokens that are padding."""
    width = max((len(seq) for seq in sequences), default=0)
    computed = width * len(sequences)
    return 1.0 - sum(len(seq) for seq in sequences) / computed if computed else 0.0


def answer_window(labels: torch.Tensor) -> int:
    """How many trailing columns of logits a left-padded batch needs for its loss.

    The logit at column ``t`` predicts the label at ``t + 1``, so the window starts one column before
    the first supervised label of any row. A classification answer is a few tokens after a prompt of
    hundreds: computing the vocabulary projection for those few columns only is most of a CPU step.
    """
    supervised_columns = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if supervised_columns.numel() == 0:
        return 1
    first = int(supervised_columns[0])
    return min(labels.shape[1], max(1, labels.shape[1] - first + 1))


@dataclass
class LeftPadCollator:
    """Collates pre-tokenised ``{input_ids, labels}`` rows into a left-padded training batch."""

    pad_token_id: int

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = [row["input_ids"] for row in rows]
        attention_mask = attention_mask_of(input_ids)
        return {
            "input_ids": left_pad(input_ids, self.pad_token_id),
            "attention_mask": attention_mask,
            "position_ids": position_ids_of(attention_mask),
            "labels": left_pad([row["labels"] for row in rows], IGNORE_INDEX),
        }
