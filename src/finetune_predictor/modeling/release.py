"""A release of a fine-tune: the adapter merged into its base, the merged folder written, and the disk it needs.

The merge goes through the model session (:meth:`ModelSession.adapter_model` and
:meth:`ModelSession.merged_model`, the one place weights load), and is checked before anything is written:
the merged model's log-probabilities on test prompts must equal the unmerged adapter model's within a
tolerance, so a merge that dropped the LoRA scaling, missed a layer or rounded the adapter away is a
:class:`MergeMismatchError` instead of a release with other weights than the ones evaluated. GGUF export and
quantization live in :mod:`finetune_predictor.modeling.gguf_export`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling.artifacts import atomic_directory, folder_checksums, write_manifest
from finetune_predictor.modeling.model_session import ModelSession
from finetune_predictor.modeling.models import sha256_file

logger = logging.getLogger(__name__)

HF_MERGED = "hf_merged"
GGUF_VARIANTS = ("f16", "q8_0", "q4_k_m")
VARIANTS = (HF_MERGED, *GGUF_VARIANTS)
MIB = 1 << 20
GIB = 1 << 30
# Bytes per parameter of each variant on disk. f16 is exact; q8_0 stores 32 weights in 34 bytes; q4_k_m mixes
# 4.5-bit blocks with 6-bit ones and falls back to 5- or 8-bit types for rows K-quants cannot hold, so it is
# taken at 5.5 bits (a small model's embedding and fallback rows weigh more than a 7B's).
GGUF_BYTES_PER_PARAM = {"f16": 2.0, "q8_0": 34 / 32, "q4_k_m": 5.5 / 8}
# Logits of a 16-bit merge differ from the unmerged model by the rounding of W + BA: a wider tolerance.
DEFAULT_LOGITS_ATOL = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}


class MergeMismatchError(UserFacingError):
    """The merged model does not compute what the adapter model computes: the merge is wrong."""


class ReleaseDiskError(UserFacingError):
    """Too little free disk for the release's files, found before any of them is written."""


def log_probs_of(model: Any, prompts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Each prompt's log-probabilities over the vocabulary at every position (one unpadded forward per prompt,
    so padding cannot hide a difference), in fp32 on the CPU."""
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for ids in prompts:
            logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0]
            outputs.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return outputs


def max_difference(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference between two models' log-probabilities on the same prompts."""
    return max(float((a - b).abs().max()) for a, b in zip(before, after, strict=True))


def logits_tolerance(setting: float | None, precision: str) -> float:
    """``release.logits_atol``, or the precision's default when it is null."""
    return float(setting) if setting is not None else DEFAULT_LOGITS_ATOL.get(precision, 5e-2)


def merge_adapter(session: ModelSession, adapter_dir: str | Path, folder: str | Path, prompts: Sequence[Sequence[int]],
                  atol: float, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the adapter into its base, check the merged log-probabilities on ``prompts`` against the unmerged
    adapter model's (at most ``atol`` apart), and write the merged HF folder (weights, config, tokenizer, chat
    template, ``manifest.json`` with every file's sha256) at ``folder``, atomically. Returns what was done."""
    if not prompts:
        raise ValueError("merge_adapter needs at least one prompt to check the merge on")
    model = session.adapter_model(adapter_dir)
    before = log_probs_of(model, prompts)
    merged = session.merged_model(adapter_dir, adapter_model=model)
    if any("lora_" in name for name, _ in merged.named_parameters()):
        raise MergeMismatchError(f"The merged model of {adapter_dir} still has LoRA layers", where=str(adapter_dir),
                                 fix="report this as a bug: merge_and_unload left adapter layers in place")
    difference = max_difference(before, log_probs_of(merged, prompts))
    if difference > atol:
        raise MergeMismatchError(
            f"The merged model's log-probabilities differ from the adapter model's by up to {difference:.3g} on "
            f"{len(prompts)} test prompts (tolerance {atol:g}): the merge does not compute what was evaluated",
            where=str(adapter_dir), fix="check that the adapter belongs to this base model (base_model in its "
            "manifest.json); a 16-bit merge may need a wider release.logits_atol")
    dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
    with atomic_directory(folder) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        session.tokenizer.save_pretrained(staging)
        write_manifest(staging, folder_checksums(staging), kind="merged model", dtype=dtype,
                       max_logprob_difference=difference, **(details or {}))
    logger.info("Merged %s into %s (%s; log-probabilities within %.2g of the adapter model's)",
                adapter_dir, folder, dtype, difference)
    return {"folder": str(folder), "dtype": dtype, "max_logprob_difference": difference, "atol": atol,
            "prompts_checked": len(prompts), "size_bytes": folder_size(folder)}


def folder_size(path: str | Path) -> int:
    """Bytes of the plain files under ``path`` (a file: its size)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


# --- the disk a release needs, checked before anything is written -------------------------------------------


def release_bytes(params: float, merged_bytes_per_param: float, variants: Sequence[str],
                  extra_bytes: float = 0.0) -> dict[str, float]:
    """Bytes each requested variant takes on disk: the merged folder (``params`` weights at the merge's
    precision, plus tokenizer files) is always written, since every GGUF is made from it."""
    need = {HF_MERGED: params * merged_bytes_per_param + 20 * MIB}
    need.update({variant: params * GGUF_BYTES_PER_PARAM[variant] + 20 * MIB
                 for variant in variants if variant in GGUF_BYTES_PER_PARAM})
    if extra_bytes:
        need["other"] = extra_bytes
    return need


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    existing = Path(path).resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_release_disk(folder: str | Path, need: dict[str, float], margin: float = 1.1) -> dict[str, Any]:
    """Refuse, before anything is written, a release whose files do not fit the free disk at ``folder``
    (with ``margin``); returns the figures checked."""
    total = sum(need.values()) * margin
    free = free_bytes(folder)
    detail = ", ".join(f"{name} {value / MIB:.0f} MiB" for name, value in need.items())
    if free < total:
        raise ReleaseDiskError(
            f"The release needs ~{total / GIB:.2f} GiB ({detail}, x{margin:g} margin) but only "
            f"{free / GIB:.2f} GiB is free at {Path(folder).resolve()}: nothing was written",
            where="release.output_dir (conf/base/parameters_release.yml)",
            fix="free disk there, point release.output_dir at a larger disk, or release fewer release.variants")
    return {"need_bytes": total, "free_bytes": free, "need": need}


def write_checksums(folder: str | Path, files: Sequence[str | Path]) -> str:
    """``SHA256SUMS`` in ``folder`` for ``files`` (paths relative to it, in ``sha256sum -c`` format); returns
    its text. A folder's files are listed one by one."""
    folder = Path(folder)
    lines = []
    for item in files:
        path = folder / item
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        lines += [f"{sha256_file(member)}  {member.relative_to(folder).as_posix()}" for member in members]
    text = "\n".join(lines) + "\n"
    (folder / "SHA256SUMS").write_text(text)
    return text
