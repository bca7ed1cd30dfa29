"""Resumable fine-tunes: the HF Trainer's own checkpoints, resumed only by the training that wrote them.

A fine-tune given a checkpoint folder (``train_lora(checkpoint_dir=...)``: a sweep configuration's folder
under ``sensitivity.output_dir``, mini_test100's ``training.checkpoint_dir/<key>``) saves a checkpoint
every ``training.checkpoint_steps`` optimiser steps and after the last one, with the Trainer's own
checkpointing (the LoRA adapter, optimizer, scheduler, RNG states and the trainer state with the whole
log history), keeping the last two (:data:`SAVE_TOTAL_LIMIT`). After SIGINT or SIGKILL the same command
resumes from the newest *complete* checkpoint of the *same* training:

- every checkpoint gets :data:`MARKER` once the Trainer has written its files: the training's fingerprint
  (:func:`fingerprint`: the tokenised rows, held-out rows, settings, the model's content, the compute plan,
  library versions), the step, the MLflow runs that trained it so far, the training seconds spent and the
  size of every file. A checkpoint without it (killed while saving), or whose files differ from it, is
  skipped and removed; one with another fingerprint is never resumed from (removed, with a warning);
- data order: the Trainer skips the batches already trained in the resumed epoch and restores the RNG
  states after the first batch, but the length-grouped sampler draws its epoch's order from the global
  torch RNG when the epoch starts, so that RNG state is saved too (:data:`EPOCH_RNG`) and restored when the
  resumed epoch starts: the resumed run sees the batches and dropout masks the uninterrupted one saw;
- one process uses a folder at a time (a file lock): a second process training the same configuration at
  the same moment trains without checkpoints rather than rotating the first one's away.

Callers delete the folder once the run that used it has finished (its adapter saved and scored): a run
killed while it is evaluated resumes at its last step and trains nothing again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from finetune_predictor.modeling.artifacts import atomic_write_text

logger = logging.getLogger(__name__)

MARKER = "resume.json"
EPOCH_RNG = "epoch_rng_state.pt"
# The newest checkpoint may be half-written when the process is killed while saving it: the one before is whole.
SAVE_TOTAL_LIMIT = 2
# What the Trainer writes into a checkpoint of a LoRA fine-tune (the adapter, not the base model's weights).
REQUIRED_FILES = ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt",
                  "rng_state.pth", "trainer_state.json", EPOCH_RNG)
# Training settings that never change what is trained: where and how often it is checkpointed.
CHECKPOINT_SETTINGS = ("checkpoint_steps", "checkpoint_dir")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Resume:
    """Where a fine-tune started: its first step (``step`` 0), or the checkpoint it resumed from."""

    step: int = 0
    checkpoint: Path | None = None
    run_ids: tuple[str, ...] = ()  # the MLflow runs that trained the steps before it (superseded by this one)
    elapsed_s: float = 0.0  # training seconds those runs spent on the steps kept
    epoch_rng: Any = None  # the torch RNG state when the resumed epoch started


OTHER_TRAINING = "was written by another training (other data, settings, model or library versions)"


def _rows_sha256(rows: Sequence[dict[str, list[int]]]) -> str:
    return hashlib.sha256(json.dumps(list(rows), sort_keys=True).encode()).hexdigest()


def fingerprint(session: Any, rows: Sequence[dict[str, list[int]]], settings: Any,
                eval_rows: Sequence[dict[str, list[int]]] | None = None) -> str:
    """What one training is: a checkpoint is resumed only by a training with the same fingerprint (the same
    tokens and answer masks, held-out rows, settings, base model content, device, precision and quantization,
    LoRA modules, and torch/transformers/peft/trl versions). Where and how often it checkpoints are not in it."""
    import peft
    import transformers
    import trl

    from finetune_predictor.modeling.models import folder_sha256

    record = {key: value for key, value in session.record().items() if key not in ("model_path", "precision_reason")}
    payload = {
        "rows": _rows_sha256(rows), "eval_rows": _rows_sha256(eval_rows or []),
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k not in CHECKPOINT_SETTINGS},
        "model": folder_sha256(session.resolved.path), "plan": record,
        "lora_target_modules": session.lora_target_modules(settings.lora.target_modules),
        "versions": [torch.__version__, transformers.__version__, peft.__version__, trl.__version__],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _step(path: Path) -> int:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else -1


class CheckpointFolder:
    """One training's checkpoint folder, locked by this process while it trains (:func:`open_folder`)."""

    def __init__(self, folder: Path, key: str, lock: Any) -> None:
        self.folder, self.key, self._lock = folder, key, lock

    def release(self) -> None:
        self._lock.release()

    def checkpoints(self) -> list[Path]:
        """The Trainer's checkpoint folders, newest first."""
        found = [path for path in self.folder.glob("checkpoint-*") if path.is_dir() and _step(path) >= 0]
        return sorted(found, key=_step, reverse=True)

    def problem(self, checkpoint: Path) -> str | None:
        """Why ``checkpoint`` cannot be resumed from (None: it can)."""
        try:
            marker = json.loads((checkpoint / MARKER).read_text())
        except FileNotFoundError:
            return "is incomplete (the process was stopped while saving it)"
        except (OSError, ValueError):
            return f"has an unreadable {MARKER}"
        if marker.get("key") != self.key:
            return OTHER_TRAINING
        sizes = marker.get("files") or {}
        for name in (*REQUIRED_FILES, *sizes):
            path = checkpoint / name
            if not path.is_file() or (name in sizes and path.stat().st_size != sizes[name]):
                return f"lacks {name}, or it changed after the checkpoint was saved"
        return None

    def resume_point(self) -> Resume:
        """The newest complete checkpoint of this training. A broken checkpoint is removed (the Trainer would
        otherwise count it among the checkpoints it keeps); one of another training of the same configuration
        is kept but never resumed from: an out-of-memory rung that ran before (another micro-batch) resumes
        from it when the ladder reaches that rung again."""
        chosen: Path | None = None
        for checkpoint in self.checkpoints():
            problem = self.problem(checkpoint)
            if problem is None:
                chosen = chosen or checkpoint
                continue
            if problem == OTHER_TRAINING:
                logger.warning("Checkpoint %s %s: kept, never resumed from by this one", checkpoint, problem)
                continue
            logger.warning("Checkpoint %s %s: never resumed from, removed", checkpoint, problem)
            shutil.rmtree(checkpoint, ignore_errors=True)
        if chosen is None:
            return Resume()
        marker = json.loads((chosen / MARKER).read_text())
        return Resume(step=int(marker["step"]), checkpoint=chosen, run_ids=tuple(marker.get("run_ids") or ()),
                      elapsed_s=float(marker.get("elapsed_s", 0.0)),
                      epoch_rng=torch.load(chosen / EPOCH_RNG, weights_only=True))


def open_folder(folder: Path, key: str) -> CheckpointFolder | None:
    """``folder`` locked for this training, or None (with a warning) when another live process holds it: two
    processes rotating each other's checkpoints away would leave neither one to resume from."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("Another process is training with the checkpoint folder %s: this one trains without "
                       "checkpoints (an interruption restarts it from its first step)", folder)
        return None
    return CheckpointFolder(folder, key, lock)


class _CheckpointCallback(TrainerCallback):
    """Completes each checkpoint the Trainer saves: the epoch's starting RNG state, then the marker (last, so
    a checkpoint with a marker is whole). Restores the resumed epoch's starting RNG state."""

    def __init__(self, folder: CheckpointFolder, resume: Resume, run_ids: list[str]) -> None:
        self.folder, self.resume, self.run_ids = folder, resume, run_ids
        self._pending_rng, self._epoch_rng = resume.epoch_rng, None
        self._started = time.perf_counter()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._pending_rng is not None:  # the resumed epoch draws the batch order the interrupted one drew
            torch.set_rng_state(self._pending_rng)
            self._pending_rng = None
        self._epoch_rng = torch.get_rng_state()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # After an epoch's last step the next epoch starts from the RNG as it is now (rng_state.pth holds it too).
        at_epoch_end = float(state.epoch or 0.0).is_integer()
        torch.save(torch.get_rng_state() if at_epoch_end else self._epoch_rng, checkpoint / EPOCH_RNG)
        marker = {
            "key": self.folder.key, "step": int(state.global_step), "run_ids": self.run_ids,
            "elapsed_s": self.resume.elapsed_s + time.perf_counter() - self._started,
            "files": {path.name: path.stat().st_size for path in checkpoint.iterdir()
                      if path.is_file() and not path.name.startswith(MARKER)},
        }
        atomic_write_text(checkpoint / MARKER, json.dumps(marker, indent=1))  # a marker is whole or absent


def train(trainer: Any, folder: CheckpointFolder | None) -> Resume:
    """``trainer.train()``, resumed from the newest complete checkpoint of this training in ``folder`` when it
    has one. Returns where training started; its ``run_ids`` are the earlier MLflow runs it supersedes."""
    if folder is None:
        trainer.train()
        return Resume()
    from finetune_predictor.tracking import active_run_id

    try:
        resume = folder.resume_point()
        run_id = active_run_id()
        chain = [*resume.run_ids, *([run_id] if run_id and run_id not in resume.run_ids else [])]
        trainer.add_callback(_CheckpointCallback(folder, resume, chain))
        if resume.checkpoint is not None:
            logger.warning("Resuming the fine-tune from %s (step %d): the steps before it are not trained again",
                           resume.checkpoint, resume.step)
        if resume.checkpoint is not None and _is_last_step(resume.checkpoint):
            _load_last_step(trainer, resume.checkpoint)
        else:
            trainer.train(resume_from_checkpoint=str(resume.checkpoint) if resume.checkpoint else None)
    finally:
        folder.release()
    return dataclasses.replace(resume, run_ids=tuple(r for r in resume.run_ids if r != run_id), epoch_rng=None)


def _is_last_step(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < int(state.get("max_steps") or 0) <= int(state["global_step"])


def _load_last_step(trainer: Any, checkpoint: Path) -> None:
    """The checkpoint of the training's last step (the run was killed after training, while it was evaluated):
    its adapter and trainer state, and no step. Resumed there, the Trainer would train one step past the last."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    loaded = set_peft_model_state_dict(trainer.model, load_file(checkpoint / "adapter_model.safetensors"))
    if loaded.unexpected_keys:
        raise RuntimeError(f"{checkpoint} holds weights this adapter does not have: {loaded.unexpected_keys[:3]}")
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def discard(folder: Path | None) -> None:
    """Delete a checkpoint folder once the run that used it has finished (its adapter saved); one that another
    live process is training with (this process trained without it) is left to that process."""
    from filelock import FileLock, Timeout

    if folder is None or not folder.is_dir():
        return
    lock = FileLock(str(folder / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        lock.release()
