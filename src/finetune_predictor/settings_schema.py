"""Typed views of the parameter dicts, so a misspelt or out-of-range setting fails before compute starts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _from_mapping(cls: type, values: dict[str, Any] | None, prefix: str) -> Any:
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(prefix + '.' + k for k in unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return cls(**values)


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] | str = "auto"  # auto: the model registry's modules for the model

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ValueError("training.lora.r and training.lora.alpha must be >= 1, "
                             f"got r={self.r}, alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"training.lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_params(cls, values: dict[str, Any] | None) -> LoraSettings:
        return _from_mapping(cls, values, "training.lora")


@dataclass(frozen=True)
class TrainingSettings:
    learning_rate: float = 3e-4
    num_train_epochs: float = 3
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    seed: int = 42
    precision: str = "auto"
    logging_steps: int = 1
    # TRL turns this on by default; it re-runs the forward pass and only pays off when memory is short.
    gradient_checkpointing: bool = False
    # answer: logits only for the trailing answer window of left-padded batches (same loss, ~2x faster on
    # CPU); full: TRL's stock collator and loss, for remote-code models whose forward lacks logits_to_keep.
    loss_window: str = "answer"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"training.learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("training.num_train_epochs or training.max_steps must be positive")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("training.per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.loss_window not in ("answer", "full"):
            raise ValueError(f"training.loss_window must be 'answer' or 'full', got {self.loss_window!r}")
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings.from_params(self.lora))

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @classmethod
    def from_params(cls, values: dict[str, Any] | None) -> TrainingSettings:
        return _from_mapping(cls, values, "training")
