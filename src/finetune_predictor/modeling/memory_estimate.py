"""The peak memory of a LoRA/QLoRA training step, estimated before any weights load, and the memory free for it.

The preflight's memory check compares the two, so that a run that cannot fit is refused up front. The estimate
is built from the model's size and shape (its ``config.json``, or a 7B-like default) and the run's settings; its
activation constants are calibrated on measured training steps (see ``_ACTIVATION_BYTES``). A planning figure
with a safety margin, not a promise.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from finetune_predictor.modeling.hardware import ComputePlan
from finetune_predictor.modeling.models import ResolvedModel
from finetune_predictor.settings_schema import TrainingSettings

GIB = 2**30
# Bytes per weight when loaded: fp32, 16-bit, and NF4 with double quantisation (~4.5 bits incl. scales).
_BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit-nf4": 0.56}
# Shape of a typical 7B decoder, used when a model's config.json is not on this machine.
_DEFAULT_SHAPE = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of a LoRA/QLoRA training step, in bytes, by component."""

    weights: float
    lora_and_optimizer: float
    activations: float
    margin: float

    @property
    def total(self) -> float:
        return (self.weights + self.lora_and_optimizer + self.activations) * self.margin

    def describe(self) -> str:
        return (f"~{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f} + LoRA/optimizer "
                f"{self.lora_and_optimizer / GIB:.2f} + activations {self.activations / GIB:.1f}, "
                f"x{self.margin:g} margin)")


def model_shape(resolved: ResolvedModel | None) -> dict[str, int]:
    """hidden size, layers and vocabulary from the model's config.json, or a 7B-like default."""
    if resolved is not None:
        config_path = Path(resolved.path) / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            config = config.get("text_config", config)
            shape = {key: int(config.get(key) or _DEFAULT_SHAPE[key]) for key in _DEFAULT_SHAPE}
            shape["num_hidden_layers"] = int(config.get("num_hidden_layers") or config.get("num_layers")
                                             or _DEFAULT_SHAPE["num_hidden_layers"])
            return shape
    return dict(_DEFAULT_SHAPE)


# Activation bytes kept for the backward pass, per token x layer x hidden unit, at 16 bits. Measured on an
# H100 (transformers 5.23, sdpa attention, LoRA r=8 on q/k/v/o with dropout, batch 8, no checkpointing) with
# a 6.7B Llama shape: 61 for bf16 LoRA and 77 for QLoRA (NF4 dequantisation buffers); rounded up. The
# textbook 34 (Korthikanti et al.) counts no LoRA dropout copies and underestimated that run by half.
# On a CPU (the embedded 135M model, two real steps of batch 8 x 131 tokens, benchmarks/cpu_training_peak_rss.py)
# the training step added 2.3-2.6 GiB of peak RSS in fp32 and 2.26 GiB under bf16 autocast, against estimates
# of 2.9 and 2.1 GiB (before the margin): the same constants hold there.
_ACTIVATION_BYTES = {"lora": 64, "qlora": 80}
# Answer-window loss projects only the answer columns onto the vocabulary; a bound on their number.
_ANSWER_WINDOW_TOKENS = 64


def estimate_training_memory(params_b: float, plan: ComputePlan, settings: TrainingSettings, shape: dict[str, int],
                             sequence_length: int, margin: float = 1.2) -> MemoryEstimate:
    """Weights at the plan's precision, LoRA weights + grads + Adam states in fp32, and activations of a
    batch of ``sequence_length``-token rows (the widest batch: every row as long as the data's longest, at
    most ``model.max_length``). Under autocast over fp32 weights (bf16 on a CPU) the weights' 16-bit copies
    count too.

    Activations: ``_ACTIVATION_BYTES`` per token x layer x hidden (doubled for fp32). With gradient
    checkpointing only each layer's 16-bit input is kept, plus one layer recomputed at a time. Logits:
    fp32 values and gradients for the positions the loss reads. A planning figure, not a promise.
    """
    params = params_b * 1e9
    weight_bytes = params * _BYTES_PER_PARAM[plan.precision_name if plan.load_in_4bit else
                                             ("fp32" if plan.load_dtype.itemsize == 4 else "bf16")]
    if not plan.load_in_4bit and plan.load_dtype.itemsize == 4 and (plan.bf16 or plan.fp16):
        weight_bytes += params * 2  # autocast over fp32 weights (bf16 on a CPU) keeps a 16-bit copy of each
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    # r x (in + out) per adapted projection; 4 attention projections + 3 MLP ones (all-linear worst case).
    lora_params = settings.lora.r * 2 * hidden * 7 * layers
    lora_bytes = lora_params * 4 * 4  # weight, gradient and two Adam moments in fp32
    tokens = settings.per_device_train_batch_size * sequence_length
    per_unit = _ACTIVATION_BYTES["qlora" if plan.load_in_4bit else "lora"]
    per_unit *= 2 if plan.load_dtype.itemsize == 4 and not plan.bf16 else 1
    if settings.gradient_checkpointing:
        activation_bytes = tokens * hidden * (2 * layers + per_unit)
    else:
        activation_bytes = tokens * hidden * layers * per_unit
    loss_positions = (settings.per_device_train_batch_size * min(sequence_length, _ANSWER_WINDOW_TOKENS)
                      if settings.loss_window == "answer" else tokens)
    logits_bytes = loss_positions * shape["vocab_size"] * 4 * 2
    return MemoryEstimate(weight_bytes, lora_bytes, activation_bytes + logits_bytes, margin)


def available_ram_bytes() -> int:
    """Memory a new allocation can get without swapping: MemAvailable from /proc/meminfo, else the free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def available_vram_bytes() -> int | None:
    """Free memory on the current CUDA device; None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def count_params_b(resolved: ResolvedModel) -> float | None:
    """Billions of parameters in the model's safetensors files, read from their headers (no weight loads);
    None when it has none."""
    total = 0
    for path in Path(resolved.path).glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += math.prod(handle.get_slice(key).get_shape())
    return total / 1e9 if total else None
