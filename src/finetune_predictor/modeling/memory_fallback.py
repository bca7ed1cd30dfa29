"""The out-of-memory ladder: what a fine-tune that ran out of accelerator memory retries with.

``training.oom_fallback`` lists the rungs, taken in order, each on top of the ones before:

- ``half_batch``: half the micro-batch and twice the gradient accumulation (the largest divisor of the
  micro-batch up to its half, so the effective batch stays exactly the same; may be listed more than once);
- ``gradient_checkpointing``: recompute activations in the backward pass instead of keeping them;
- ``4bit``: QLoRA, the base loaded as bitsandbytes NF4 (only on CUDA with bitsandbytes installed, and only
  when listed: it changes what is trained, so the run record's ``quantization_actual`` and ``precision`` say so).

A rung that cannot apply (micro-batch already 1, checkpointing already on, no CUDA) is skipped and named in
the error if every rung runs out of memory. Each retry starts from the session's base model with LoRA attached
afresh (``training.train_lora``), so it trains what a run started with those settings would. What a run actually
ran with is in its training summary and run record (:meth:`Attempt.record`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling.model_session import ModelSession
from finetune_predictor.settings_schema import TrainingSettings

OOM_FALLBACKS = ("half_batch", "gradient_checkpointing", "4bit")


class OutOfMemoryFallbackError(UserFacingError):
    """Every rung of ``training.oom_fallback`` ran out of accelerator memory."""


@dataclass(frozen=True)
class Attempt:
    """One try of a fine-tune: the settings and session it trains with, and the rungs that led to it."""

    settings: TrainingSettings
    session: ModelSession
    fallbacks: tuple[str, ...] = ()

    def describe(self) -> str:
        settings = self.settings
        return (f"micro-batch {settings.per_device_train_batch_size} x {settings.gradient_accumulation_steps} "
                f"accumulation, gradient checkpointing {'on' if settings.gradient_checkpointing else 'off'}, "
                f"{self.session.plan.precision_name}")

    def record(self, retries: int) -> dict[str, object]:
        """What the run actually trained with, for the training summary and the run record."""
        return {"oom_retries": retries, "oom_fallbacks": list(self.fallbacks),
                "per_device_train_batch_size_actual": self.settings.per_device_train_batch_size,
                "gradient_accumulation_steps_actual": self.settings.gradient_accumulation_steps,
                "gradient_checkpointing_actual": self.settings.gradient_checkpointing}


def smaller_micro_batch(batch: int) -> int | None:
    """The largest divisor of ``batch`` no larger than its half (8 -> 4, 6 -> 3, 3 -> 1), or None at 1."""
    return next((size for size in range(batch // 2, 0, -1) if batch % size == 0), None)


def four_bit_unavailable(session: ModelSession) -> str | None:
    """Why this session cannot be loaded in 4 bits, or None when it can."""
    if session.plan.load_in_4bit:
        return "the base is already 4-bit"
    if session.plan.device != "cuda":
        return "4-bit QLoRA needs a CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "4-bit QLoRA needs bitsandbytes (pip install 'finetune-predictor[gpu]')"
    return None


def apply_rung(attempt: Attempt, rung: str) -> tuple[Attempt | None, str]:
    """The attempt after ``rung``, or None and why the rung does not apply."""
    settings, session = attempt.settings, attempt.session
    if rung == "half_batch":
        smaller = smaller_micro_batch(settings.per_device_train_batch_size)
        if smaller is None:
            return None, "half_batch: the micro-batch is already 1"
        factor = settings.per_device_train_batch_size // smaller
        settings = replace(settings, per_device_train_batch_size=smaller,
                           gradient_accumulation_steps=settings.gradient_accumulation_steps * factor)
    elif rung == "gradient_checkpointing":
        if settings.gradient_checkpointing:
            return None, "gradient_checkpointing: already on"
        settings = replace(settings, gradient_checkpointing=True)
    elif rung == "4bit":
        reason = four_bit_unavailable(session)
        if reason is not None:
            return None, f"4bit: {reason}"
        session = replace(session, plan=replace(session.plan, load_in_4bit=True))
    else:
        raise ValueError(f"unknown training.oom_fallback rung {rung!r}; known: {', '.join(OOM_FALLBACKS)}")
    return Attempt(settings, session, (*attempt.fallbacks, rung)), ""


def next_attempt(attempt: Attempt, rungs: Iterator[str], skipped: list[str]) -> Attempt | None:
    """The first rung left in ``rungs`` that applies (those that do not are appended to ``skipped``)."""
    for rung in rungs:
        following, reason = apply_rung(attempt, rung)
        if following is not None:
            return following
        skipped.append(reason)
    return None


def exhausted_error(tried: Sequence[Attempt], skipped: Sequence[str], error: BaseException) -> OutOfMemoryFallbackError:
    """One error naming every attempt that ran out of memory, the rungs that could not apply, and what to set."""
    first, last = tried[0].settings, tried[-1].settings
    ladder = ", ".join(first.oom_fallback) or "none"
    what = (f"Training ran out of accelerator memory ({str(error).splitlines()[0] if str(error) else 'OOM'}) with "
            + "; then with ".join(attempt.describe() for attempt in tried)
            + (f" (not applicable: {'; '.join(skipped)})" if skipped else ""))
    fix = []
    smaller = smaller_micro_batch(last.per_device_train_batch_size)
    if smaller is not None:
        factor = last.per_device_train_batch_size // smaller
        fix.append(f"set training.per_device_train_batch_size={smaller} and training.gradient_accumulation_steps="
                   f"{last.gradient_accumulation_steps * factor} (the same effective batch)")
    if not last.gradient_checkpointing:
        fix.append("set training.gradient_checkpointing=true")
    if "4bit" not in first.oom_fallback and not tried[-1].session.plan.load_in_4bit:
        fix.append("add 4bit to training.oom_fallback (QLoRA on CUDA with bitsandbytes)")
    fix.append("lower model.max_length, or use a smaller model or a GPU with more memory")
    return OutOfMemoryFallbackError(what, where=f"training.oom_fallback=[{ladder}]", fix="; ".join(fix))
