"""The one model session: device, precision, quantization, tokenizer, formatter and weights, decided once.

Training, evaluation, meta-feature probes and preflight all open a :class:`ModelSession` from the same
``model`` parameters and the run's ``training.precision``, so a QLoRA adapter is scored on the same
4-bit base it was trained on, and a probe trains under the settings of the run it predicts. This is the
only module that loads causal-LM weights (``from_pretrained``), GGUF conversion and a release's adapter merge
included.

What a session actually used (``precision``, ``quantization_requested``, ``quantization_actual``,
``device``) is returned by :meth:`ModelSession.record` and logged on every run.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from finetune_predictor.modeling.artifacts import (
    ArtifactIntegrityError,
    atomic_directory,
    read_manifest,
    verify_manifest,
)
from finetune_predictor.modeling.chat_format import PromptFormatter
from finetune_predictor.modeling.hardware import ComputePlan, choose_compute_plan
from finetune_predictor.modeling.models import ModelEntry, ResolvedModel, locate_model

logger = logging.getLogger(__name__)

PURPOSES = ("train", "evaluate", "probe", "preflight")
_COMPLETE_MARKER = ".conversion-complete"


def convert_gguf_to_hf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF file into an HF folder at ``target`` once, and reuse it afterwards.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    conversion never leaves a half-written model that a later run would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s to an HF folder in %s (once)", gguf_path, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse; the weights are
    # already dequantized to fp32, so the marker is cleared before saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(str(gguf_path))
    return target


def resolve_model(name: str, cache_dir: str | Path | None = None,
                  registry: dict[str, Any] | None = None) -> ResolvedModel:
    """``model.name`` as an HF folder on this machine: located by the registry, GGUF converted once."""
    location = locate_model(name, cache_dir, registry)
    if location.gguf_path is not None:
        convert_gguf_to_hf(location.gguf_path, Path(location.resolved.path))
    return location.resolved


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, plan: ComputePlan, for_training: bool = False, trust_remote_code: bool = False) -> Any:
    """The base model for ``plan``: fp32 on CPU, bf16/fp16 on CUDA, NF4 4-bit for QLoRA."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar clutters the run's log
    kwargs: dict[str, Any] = {"dtype": plan.load_dtype, "trust_remote_code": trust_remote_code}
    if plan.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.load_dtype,
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if plan.load_in_4bit and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif plan.device == "cuda" and not plan.load_in_4bit:
        model = model.to("cuda")
    return model


# --- one base model per process (a sweep's configurations) -----------------------------------------------

_KEPT_BASE_MODELS: dict[tuple[str, str, bool], Any] = {}
_keep_base_models = False


def keep_base_models(enabled: bool = True) -> None:
    """Load each base model once in this process and hand every later load a copy of it (a sweep's
    configurations and their probes; a Ray worker keeps its copy between tasks). ``False`` drops them.

    A copy, because training adds LoRA layers to the model it gets and evaluation merges an adapter into
    it: the kept model itself is never handed out, so no configuration sees another's changes. It stays
    on the CPU (a GPU holds only the copies in use). A 4-bit base is loaded from disk each time: its
    bitsandbytes weights are quantised as they are loaded onto the GPU and do not copy reliably.
    """
    global _keep_base_models
    _keep_base_models = enabled
    if not enabled:
        _KEPT_BASE_MODELS.clear()


def _base_model(path: str, plan: ComputePlan, for_training: bool, trust_remote_code: bool) -> Any:
    if not _keep_base_models or plan.load_in_4bit:
        return load_causal_lm(path, plan, for_training=for_training, trust_remote_code=trust_remote_code)
    key = (path, str(plan.load_dtype), trust_remote_code)
    if key not in _KEPT_BASE_MODELS:
        _KEPT_BASE_MODELS[key] = load_causal_lm(path, replace(plan, device="cpu"), trust_remote_code=trust_remote_code)
    model = copy.deepcopy(_KEPT_BASE_MODELS[key])
    return model.to("cuda") if plan.device == "cuda" else model


@dataclass
class ModelSession:
    """One base model as every stage of a run sees it: where it lives, how it runs, how prompts look."""

    resolved: ResolvedModel
    plan: ComputePlan
    formatter: PromptFormatter
    purpose: str
    quantization_requested: str = "none"

    @property
    def tokenizer(self) -> Any:
        return self.formatter.tokenizer

    @property
    def entry(self) -> ModelEntry | None:
        return self.resolved.entry

    def with_purpose(self, purpose: str) -> ModelSession:
        """The same model, settings and tokenizer for another purpose (no reload)."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        return replace(self, purpose=purpose)

    def load_model(self, adapter_dir: str | Path | None = None) -> Any:
        """The base model for this session's purpose; with ``adapter_dir``, the trained adapter on top.

        A full-precision base gets the adapter merged (one matmul per layer at inference). A 4-bit base
        keeps it unmerged: merging into NF4 weights would round the adapter away. The adapter's files are
        checked against the sha256 its manifest recorded at save, and an adapter whose LoRA weights all stay
        zero once loaded (none matched this base's layers) is refused: either would otherwise score the base
        model under the adapter's name.
        """
        if adapter_dir is not None:
            verify_manifest(adapter_dir)  # before loading the base: a bad adapter fails in a second
        model = _base_model(self.resolved.path, self.plan, for_training=self.purpose in ("train", "probe"),
                            trust_remote_code=self.resolved.trust_remote_code)
        if adapter_dir is None:
            return model
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
        _refuse_identity_adapter(model, adapter_dir)
        return model if self.plan.load_in_4bit else model.merge_and_unload()

    def adapter_model(self, adapter_dir: str | Path) -> Any:
        """The base model at full precision with the adapter on top, unmerged (a PEFT model): what a release
        merges, and the reference its merged weights are checked against. The adapter's files are checked
        first, and an adapter that changes nothing is refused (as in :meth:`load_model`). A 4-bit session
        loads the full-precision base here: merging into NF4 weights would round the adapter away."""
        from peft import PeftModel

        verify_manifest(adapter_dir)
        plan = replace(self.plan, load_in_4bit=False)
        model = load_causal_lm(self.resolved.path, plan, trust_remote_code=self.resolved.trust_remote_code)
        model = PeftModel.from_pretrained(model, str(adapter_dir))
        _refuse_identity_adapter(model, adapter_dir)
        return model.eval()

    def merged_model(self, adapter_dir: str | Path, adapter_model: Any | None = None) -> Any:
        """The adapter merged into the full-precision base weights with PEFT's ``merge_and_unload`` (each
        LoRA layer's ``W + scaling * B @ A``): a plain transformers model with no PEFT layers left.
        ``adapter_model`` is one :meth:`adapter_model` returned (merged in place, not loaded again)."""
        model = adapter_model if adapter_model is not None else self.adapter_model(adapter_dir)
        return model.merge_and_unload().eval()

    def for_folder(self, path: str | Path, name: str | None = None) -> ModelSession:
        """This session reading another HF folder of the same model (a merged release): the same device,
        precision, tokenizer, template and registry entry, so prompts are built as they were for the base."""
        resolved = replace(self.resolved, name=name or str(path), path=str(path), source="local")
        return replace(self, resolved=resolved)

    def for_adapter(self, adapter_dir: str | Path) -> ModelSession:
        """This session as the adapter in ``adapter_dir`` was trained (its manifest): an adapter that training
        fell back to 4-bit QLoRA for (``training.oom_fallback``) is scored on the 4-bit base it was trained
        on, where CUDA allows it; otherwise the session itself."""
        quantization = read_manifest(adapter_dir).get("quantization", "none")
        if quantization != "4bit" or self.plan.load_in_4bit:
            return self
        if self.plan.device != "cuda":
            logger.warning("The adapter in %s was trained on a 4-bit base; without CUDA it is scored on the "
                           "full-precision base", adapter_dir)
            return self
        return replace(self, plan=replace(self.plan, load_in_4bit=True))

    def lora_target_modules(self, setting: tuple[str, ...] | list[str] | str) -> list[str] | str:
        """``training.lora.target_modules``; ``auto`` takes the registry's modules (else all linear layers)."""
        if setting == "auto":
            setting = self.entry.lora_target_modules if self.entry is not None else "all-linear"
        return setting if isinstance(setting, str) else list(setting)

    def record(self) -> dict[str, Any]:
        """The settings this session actually runs with, for the run record."""
        return {
            "model_path": self.resolved.path,
            "model_source": self.resolved.source,
            "device": self.plan.device,
            "precision": self.plan.precision_name,
            "precision_reason": self.plan.reason,
            "quantization_requested": self.quantization_requested,
            "quantization_actual": "4bit" if self.plan.load_in_4bit else "none",
        }


def _refuse_identity_adapter(model: Any, adapter_dir: str | Path) -> None:
    """Refuse a loaded adapter that changes nothing. PEFT leaves the LoRA B matrices it finds no saved weights
    for at zero (with a warning), and training refuses an adapter whose B matrices are all zero, so all-zero B
    here means the saved weights did not reach this base: the metrics would be the base model's."""
    b_max = [param.detach().float().abs().max().item() for name, param in model.named_parameters()
             if "lora_B" in name]
    if not b_max or max(b_max) == 0.0:
        raise ArtifactIntegrityError(
            f"The adapter in {adapter_dir} changes nothing once loaded: none of its LoRA weights reached this "
            "base model's layers, so evaluation would score the base model", where=str(adapter_dir),
            fix="evaluate the adapter with the base model it was trained on (base_model in its manifest.json)")


def compute_plan(model: dict[str, Any], precision: str = "auto") -> ComputePlan:
    """Device, precision and quantization for ``model`` params on this machine (no model files needed)."""
    return choose_compute_plan(precision, str(model.get("quantization", "none")))


def open_session(model: dict[str, Any], registry: dict[str, Any] | None, purpose: str,
                 precision: str = "auto") -> ModelSession:
    """Decide device, precision and quantization for ``purpose`` and load tokenizer and formatter once.

    ``model`` is the ``model`` parameter group; ``precision`` is ``training.precision`` (the same for
    every purpose, so evaluation and probes run as the training they judge did).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    plan = compute_plan(model, precision)
    resolved = resolve_model(model["name"], model.get("cache_dir"), registry)
    formatter = PromptFormatter(
        tokenizer=load_tokenizer(resolved.path, resolved.trust_remote_code),
        max_length=int(model.get("max_length", 512)),
        system_prompt=model.get("system_prompt"),
        use_chat_template=resolved.entry.chat_template if resolved.entry else True,
    )
    return ModelSession(resolved, plan, formatter, purpose, str(model.get("quantization", "none")))
