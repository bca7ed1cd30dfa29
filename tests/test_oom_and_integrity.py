"""Issue 17: out-of-memory fallback, atomic artifacts and adapter integrity, each proved by injecting the fault.

The out-of-memory error is injected by a Trainer callback that raises CUDA's ``torch.OutOfMemoryError`` at a
given step of the first N attempts, on the tiny random Llama on CPU (fp32); kills are real SIGKILLs of a child
process; corruption is bytes changed on disk.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import weakref
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from kedro.io.core import DatasetError, Version
from transformers import TrainerCallback

from finetune_predictor import preflight, tracking
from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.datasets import AdapterDataset, AtomicCSVDataset, AtomicTextDataset
from finetune_predictor.errors import UserFacingError, find_user_error
from finetune_predictor.modeling import memory_fallback, model_session
from finetune_predictor.modeling.artifacts import (
    MANIFEST_NAME,
    ArtifactIntegrityError,
    atomic_directory,
    folder_checksums,
    verify_manifest,
    write_manifest,
)
from finetune_predictor.modeling.evaluation import predict
from finetune_predictor.modeling.hardware import ComputePlan
from finetune_predictor.modeling.memory_fallback import (
    Attempt,
    OutOfMemoryFallbackError,
    apply_rung,
    smaller_micro_batch,
)
from finetune_predictor.modeling.training import SAVED_ADAPTER_FILES, build_training_rows, fine_tune, train_lora
from finetune_predictor.pipelines.preflight.nodes import enforce_verdict
from finetune_predictor.preflight import FAIL, PreflightError, run_checks
from finetune_predictor.settings_schema import SettingsError, TrainingSettings
from finetune_predictor.tasks import build_task
from tests.conftest import PROJECT_ROOT
from tests.reliability import record_fault

DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"}
# Two optimiser steps of an effective batch of 4; no held-out curve (nothing here reads it).
TRAINING = {"max_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "precision": "fp32",
            "learning_rate": 1e-2, "eval_steps": 0, "logging_steps": 1}


class InjectOutOfMemory(TrainerCallback):
    """Raises CUDA's out-of-memory error when step ``at_step`` begins, in the first ``times`` attempts; records
    the micro-batch, accumulation and gradient checkpointing of every attempt."""

    def __init__(self, times: int, at_step: int = 0) -> None:
        self.times, self.at_step, self.raised, self.attempts = times, at_step, 0, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.attempts.append((args.per_device_train_batch_size, args.gradient_accumulation_steps,
                              bool(args.gradient_checkpointing)))

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at_step and self.raised < self.times:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (injected by the test)")


def _train_frame(count: int = 8) -> pd.DataFrame:
    return pd.DataFrame(list(iter_articles(count, seed=5)))


def _fine_tune(session, workdir: Path, callbacks=(), **training):
    return fine_tune(_train_frame(), session, build_task(DATA), {**TRAINING, **training}, workdir, callbacks=callbacks)


def _record(summary: dict) -> tracking.RunRecord:
    split = {"source": "bundled-synthetic-news", "test_source": "t", "test_sha256": "x" * 64, "train_size": 8,
             "test_size": 2, "train_sha256": "y" * 64, "family": "f"}
    metrics = {"baseline": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.5}}
    return tracking.build_run_record(split, summary, metrics, {"name": "tiny"}, TRAINING, DATA)


# --- out of memory: the ladder -----------------------------------------------------------------------------


def test_out_of_memory_walks_the_ladder_and_records_it_on_the_run(tiny_session, tmp_path, request):
    """Two OOMs (the first after an optimiser step): half the micro-batch at twice the accumulation, then gradient
    checkpointing; the run finishes, the effective batch is unchanged, and the training summary and the MLflow
    run record both say what the run actually trained with."""
    injector = InjectOutOfMemory(times=2, at_step=1)
    adapter_dir, summary = _fine_tune(tiny_session, tmp_path / "run", callbacks=[injector])
    assert injector.attempts == [(4, 1, False), (2, 2, False), (2, 2, True)]
    assert summary["oom_retries"] == 2 and summary["oom_fallbacks"] == ["half_batch", "gradient_checkpointing"]
    assert (summary["per_device_train_batch_size_actual"], summary["gradient_accumulation_steps_actual"],
            summary["gradient_checkpointing_actual"]) == (2, 2, True)
    assert summary["effective_batch_size"] == 4 and summary["num_steps"] == 2
    assert summary["quantization_actual"] == "none"  # 4bit is not on the default ladder
    assert (adapter_dir / "adapter_model.safetensors").is_file()

    record = _record(summary)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        experiment = mlflow.set_experiment(tracking.EXPERIMENT_NAME).experiment_id
        with mlflow.start_run(experiment_id=experiment) as run:
            parameters = {"model": {"name": "tiny"}, "training": TRAINING, "data": DATA}
            tracking.log_params(run.info.run_id, tracking.settings_params(parameters, with_record=True))
            tracking.log_record(run.info.run_id, record)
        params = mlflow.get_run(run.info.run_id).data.params
    finally:
        mlflow.set_tracking_uri("")
    assert params["oom_retries"] == "2" and params["oom_fallbacks"] == "half_batch,gradient_checkpointing"
    assert params["per_device_train_batch_size_actual"] == "2" and params["gradient_accumulation_steps_actual"] == "2"
    assert params["gradient_checkpointing_actual"] == "True" and params["effective_batch_size"] == "4"
    assert params["training.per_device_train_batch_size"] == "4"  # what was asked for, beside what ran
    record_fault(request.node.name, fault="CUDA out of memory during a fine-tune (twice)",
                 injected="callback raises torch.OutOfMemoryError at step 1 of 2, in two attempts",
                 outcome="retried: micro-batch 4x1 -> 2x2, then + gradient checkpointing; finished",
                 lost="nothing: same effective batch; the ladder is on the run record",
                 time_lost="the failed attempts' steps re-run (1 of 2, then 0 of 2) and two model loads")


def test_a_retry_trains_what_a_run_started_with_its_settings_trains(tiny_session, tmp_path, request):
    """The retry starts from the base model with fresh LoRA weights and the same seed: the OOM struck after an
    optimiser step had changed the first attempt's model, and the retry's adapter is byte for byte the adapter
    of a run started at micro-batch 2 x 2 accumulation."""
    _, retried = _fine_tune(tiny_session, tmp_path / "retried", callbacks=[InjectOutOfMemory(times=1, at_step=1)])
    _, direct = _fine_tune(tiny_session, tmp_path / "direct", per_device_train_batch_size=2,
                           gradient_accumulation_steps=2)
    assert retried["oom_fallbacks"] == ["half_batch"] and direct["oom_retries"] == 0
    assert retried["adapter_sha256"] == direct["adapter_sha256"]
    assert [h["loss"] for h in retried["loss_history"]] == [h["loss"] for h in direct["loss_history"]]
    record_fault(request.node.name, fault="CUDA out of memory after an optimiser step",
                 injected="callback raises torch.OutOfMemoryError at step 1 of 2, once",
                 outcome="retried from a clean base model: adapter identical to a run started at 2x2",
                 lost="nothing: no state of the failed attempt reaches the retry",
                 time_lost="1 of 2 steps re-run, one model load")


def test_the_failed_attempt_s_model_is_freed_before_the_retry(tiny_session, tmp_path, monkeypatch):
    """Between attempts the failed one's model is released (its traceback dropped, then a collection), or a
    GPU that just ran out of memory would retry with the old model still on it."""
    loaded, alive_at_retry = [], []
    original = model_session.load_causal_lm

    def load_and_track(*args, **kwargs):
        model = original(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(model_session, "load_causal_lm", load_and_track)

    class CheckAtRetry(InjectOutOfMemory):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if len(self.attempts) == 2:
                alive_at_retry.append(loaded[0]() is not None)

    gc.disable()  # only the training code's own collection may free the model
    try:
        _fine_tune(tiny_session, tmp_path / "run", callbacks=[CheckAtRetry(times=1)])
    finally:
        gc.enable()
    assert len(loaded) == 2 and alive_at_retry == [False]


def test_out_of_memory_on_the_last_rung_is_one_clear_error(tiny_session, tmp_path, request):
    """Every rung runs out of memory: one user error naming each attempt, the rungs that cannot apply on this
    machine (4bit without CUDA), and what to set; no adapter is left behind."""
    with pytest.raises(OutOfMemoryFallbackError) as caught:
        _fine_tune(tiny_session, tmp_path / "run", callbacks=[InjectOutOfMemory(times=99)],
                   oom_fallback=["half_batch", "gradient_checkpointing", "4bit"])
    error = caught.value
    assert isinstance(error, UserFacingError) and isinstance(error.__cause__, torch.OutOfMemoryError)
    assert "micro-batch 4 x 1 accumulation, gradient checkpointing off, fp32; then with micro-batch 2 x 2 " \
           "accumulation, gradient checkpointing off, fp32; then with micro-batch 2 x 2 accumulation, gradient " \
           "checkpointing on, fp32" in error.what
    assert "not applicable: 4bit: 4-bit QLoRA needs a CUDA GPU" in error.what
    assert error.where == "training.oom_fallback=[half_batch, gradient_checkpointing, 4bit]"
    assert "training.per_device_train_batch_size=1 and training.gradient_accumulation_steps=4" in error.fix
    assert "finetune-predictor: Training ran out of accelerator memory" in error.render()
    assert not (tmp_path / "run" / "adapter").exists()

    with pytest.raises(OutOfMemoryFallbackError) as caught:  # no ladder: the first OOM is the error
        _fine_tune(tiny_session, tmp_path / "none", callbacks=[InjectOutOfMemory(times=99)], oom_fallback=[])
    assert "then with" not in caught.value.what and "add 4bit to training.oom_fallback" in caught.value.fix
    record_fault(request.node.name, fault="CUDA out of memory on every rung of the ladder",
                 injected="callback raises torch.OutOfMemoryError at the first step of every attempt",
                 outcome="failed clearly: one error naming each attempt, the rung that cannot apply and what to set",
                 lost="the configuration (no adapter written)", time_lost="three model loads, no step trained")


def test_the_ladder_keeps_the_effective_batch_and_asks_for_4bit_only_where_it_can(tiny_session, monkeypatch):
    assert [smaller_micro_batch(size) for size in (8, 6, 5, 3, 2, 1)] == [4, 3, 1, 1, 1, None]
    settings = TrainingSettings.from_params({"per_device_train_batch_size": 6, "gradient_accumulation_steps": 3})
    halved, _ = apply_rung(Attempt(settings, tiny_session), "half_batch")
    assert (halved.settings.per_device_train_batch_size, halved.settings.gradient_accumulation_steps) == (3, 6)
    assert halved.settings.effective_batch_size == settings.effective_batch_size
    assert apply_rung(Attempt(settings, tiny_session), "4bit") == (None, "4bit: 4-bit QLoRA needs a CUDA GPU")

    cuda = ComputePlan("cuda", torch.bfloat16, True, False, False, "a GPU (faked: no model is loaded)")
    on_gpu = Attempt(settings, model_session.replace(tiny_session, plan=cuda))
    monkeypatch.setattr(memory_fallback.importlib.util, "find_spec", lambda name: None)
    assert apply_rung(on_gpu, "4bit")[1] == ("4bit: 4-bit QLoRA needs bitsandbytes "
                                             "(pip install 'finetune-predictor[gpu]')")
    monkeypatch.setattr(memory_fallback.importlib.util, "find_spec", lambda name: object())
    quantized, _ = apply_rung(on_gpu, "4bit")
    assert quantized.session.record()["quantization_actual"] == "4bit" and quantized.fallbacks == ("4bit",)
    assert quantized.session.record()["precision"] == "4bit-nf4"
    assert tiny_session.plan.load_in_4bit is False  # the session the caller holds is unchanged

    with pytest.raises(SettingsError, match=r"training.oom_fallback must be one of half_batch, gradient_checkpointing, "
                                            r"4bit, got \('halve',\)"):
        TrainingSettings.from_params({"oom_fallback": ["halve"]})
    defaults = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_training.yml").read_text())["training"]
    assert tuple(defaults["oom_fallback"]) == TrainingSettings().oom_fallback
    assert TrainingSettings().oom_fallback == ("half_batch", "gradient_checkpointing")


def test_the_cpu_preflight_refuses_a_training_step_that_cannot_fit(tiny_model_dir, tmp_path, monkeypatch, request):
    """On a CPU there is no OOM to retry: the preflight's memory check refuses the run before a model loads."""
    monkeypatch.setattr(preflight, "available_ram_bytes", lambda: 1 << 20)
    data = {**DATA, "path": None, "test_path": None, "train_per_class": 4, "test_per_class": 4,
            "synthetic": {"num_records": 40}}
    table = run_checks(data, {"name": str(tiny_model_dir), "max_length": 256}, {},
                       {"per_device_train_batch_size": 8, "precision": "fp32"},
                       {"output_dirs": [str(tmp_path / "out")], "min_free_disk_gb": 0.0})
    memory = table.set_index("name").loc["memory"]
    assert memory["status"] == FAIL and "will not fit" in memory["detail"]
    assert "0.0 GiB RAM available" in memory["detail"]
    with pytest.raises(PreflightError) as caught:
        enforce_verdict(table)
    assert "memory" in str(caught.value)
    record_fault(request.node.name, fault="training step larger than the CPU's free memory",
                 injected="available RAM reported as 1 MiB", outcome="refused by the preflight's memory check",
                 lost="nothing", time_lost="none: refused before the model loads")


# --- atomic artifacts --------------------------------------------------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from finetune_predictor.modeling.artifacts import atomic_directory
with atomic_directory(Path(sys.argv[1])) as staging:
    (staging / "adapter_config.json").write_text("{}")
    with open(staging / "adapter_model.safetensors", "wb") as handle:
        handle.write(b"half of the weights")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_during_a_folder_save_leaves_the_old_folder_or_none(tmp_path, request):
    """SIGKILL in the middle of writing the adapter's weights: the destination holds the previous adapter (or
    nothing), never the half-written one."""
    final = tmp_path / "adapter"
    for before in (None, "the previous adapter"):
        if before:
            final.mkdir()
            (final / "adapter_model.safetensors").write_text(before)
        done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(final)], check=False,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")})
        assert done.returncode == -signal.SIGKILL
        if before:
            assert (final / "adapter_model.safetensors").read_text() == before
            assert sorted(p.name for p in final.iterdir()) == ["adapter_model.safetensors"]
        else:
            assert not final.exists()
    with atomic_directory(final) as staging:  # a save that completes replaces the old folder whole
        (staging / "adapter_model.safetensors").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter.old")]
    record_fault(request.node.name, fault="process killed while saving the adapter",
                 injected="SIGKILL after half of adapter_model.safetensors was written",
                 outcome="nothing lost: the previous adapter (or no folder) at the final path",
                 lost="the save in progress only", time_lost="the save (the adapter is re-saved by the re-run)")


def test_a_failed_adapter_save_leaves_no_adapter_folder(tiny_session, tmp_path, monkeypatch, request):
    """The disk fills while PEFT writes the weights: training fails, and no folder at the adapter's path (nor a
    hidden leftover) could pass for the adapter. A save that completes carries the manifest of its sha256."""
    from peft import PeftModel

    original = PeftModel.save_pretrained

    def full_disk(self, folder, *args, **kwargs):
        Path(folder, "adapter_model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    records = list(iter_articles(4, seed=5))
    rows = build_training_rows(tiny_session.formatter, records, [r["output"] for r in records])
    settings = TrainingSettings.from_params(TRAINING)
    monkeypatch.setattr(PeftModel, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train_lora(tiny_session, rows, settings, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if "adapter" in p.name) == []
    monkeypatch.setattr(PeftModel, "save_pretrained", original)
    result = train_lora(tiny_session, rows, settings, tmp_path)
    manifest = verify_manifest(result.adapter_dir)
    assert manifest["sha256"] == result.adapter_sha256 and manifest["quantization"] == "none"
    assert manifest["base_model"] == tiny_session.resolved.name and manifest["precision"] == "fp32"
    record_fault(request.node.name, fault="disk full while saving the adapter",
                 injected="PeftModel.save_pretrained writes 100 bytes then raises ENOSPC",
                 outcome="failed clearly: the run fails, no adapter folder at the final path",
                 lost="the configuration's training (no partial adapter kept)", time_lost="the whole fine-tune")


def test_catalog_reports_are_saved_atomically(tmp_path, monkeypatch, request):
    """A report whose save fails half-way (or is killed, leaving a hidden partial) keeps the last complete one;
    a versioned table's failed save leaves no version that a later load would pick."""
    report = AtomicTextDataset(filepath=str(tmp_path / "report.md"))
    report.save("# the complete report\n")
    real_open = report._fs.open

    def half_then_full(*args, **kwargs):
        """A file that takes half of what is written to it, then reports a full disk."""
        handle = real_open(*args, **kwargs)
        write = handle.write

        def write_half(text):
            write(text[: len(text) // 2])
            handle.flush()
            raise OSError(28, "No space left on device")

        handle.write = write_half
        return handle

    monkeypatch.setattr(report._fs, "open", half_then_full)
    with pytest.raises(DatasetError, match="No space left"):
        report.save("# a new report that never completes\n")
    monkeypatch.undo()
    assert report.load() == "# the complete report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]

    table = tmp_path / "table.csv"
    first = AtomicCSVDataset(filepath=str(table), version=Version(None, "2026-01-01T00.00.00.000Z"))
    first.save(pd.DataFrame({"a": [1]}))
    # What a kill mid-save leaves: a later version folder holding only a hidden partial file.
    (table / "2026-01-02T00.00.00.000Z").mkdir()
    (table / "2026-01-02T00.00.00.000Z" / ".table.partial-0123.csv").write_text("a\n")
    assert AtomicCSVDataset(filepath=str(table), version=Version(None, None)).load()["a"].tolist() == [1]
    record_fault(request.node.name, fault="report or table save interrupted half-way",
                 injected="TextDataset write raises ENOSPC after half the text; a killed versioned CSV save's partial",
                 outcome="nothing lost: the last complete report is kept and loaded",
                 lost="the save in progress only", time_lost="the save (the node re-runs)")


def test_every_file_dataset_of_the_catalog_saves_atomically():
    """A plain kedro-datasets file dataset in the catalog would write in place (a kill leaves half a file)."""
    catalog = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    kinds = []
    for name, entry in catalog.items():
        if name.startswith("_"):
            continue
        inner = entry.get("dataset", entry)
        kinds.append((name, inner["type"] if isinstance(inner, dict) else inner))
    plain = [(name, kind) for name, kind in kinds
             if "filepath" in str(catalog[name]) and not kind.startswith("finetune_predictor.datasets.")]
    assert plain == []


# --- adapter integrity at load -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_adapter(tiny_session, tmp_path_factory):
    """A trained tiny adapter as the catalog saves it (versioned AdapterDataset, manifest included)."""
    workdir = tmp_path_factory.mktemp("integrity")
    adapter_dir, summary = _fine_tune(tiny_session, workdir / "run")
    dataset = AdapterDataset(filepath=str(workdir / "catalog" / "adapter"), version=Version(None, "v1"))
    dataset.save({name: (adapter_dir / name).read_bytes() for name in SAVED_ADAPTER_FILES})
    return Path(dataset.load()), summary


def _copy(adapter: Path, target: Path) -> Path:
    import shutil

    return Path(shutil.copytree(adapter, target))


def _predict(session, adapter_dir) -> pd.DataFrame:
    test = pd.DataFrame(list(iter_articles(4, seed=9))).assign(id=lambda f: [f"r{i}" for i in range(len(f))])
    return predict(test, build_task(DATA), session.with_purpose("evaluate"), {"generation": False, "batch_size": 4},
                   adapter_dir=None if adapter_dir is None else str(adapter_dir))


def test_the_adapter_s_sha256_recorded_at_save_is_checked_at_load(saved_adapter, tiny_session, tmp_path, request):
    adapter, summary = saved_adapter
    manifest = json.loads((adapter / MANIFEST_NAME).read_text())
    assert manifest["sha256"] == summary["adapter_sha256"]  # the catalog's copy carries training's hashes
    scored = _predict(tiny_session, adapter)  # intact: scored with the adapter, unlike the base model
    assert not scored["prob_positive"].equals(_predict(tiny_session, None)["prob_positive"])

    corrupted = _copy(adapter, tmp_path / "corrupted")
    weights = corrupted / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as caught:
        _predict(tiny_session, corrupted)
    expected = summary["adapter_sha256"]["adapter_model.safetensors"]
    assert f"{weights} is not the file that was saved: expected sha256 {expected}, actual " in caught.value.what
    assert caught.value.where == str(weights) and "re-run the run that saved this adapter" in caught.value.fix

    missing = _copy(adapter, tmp_path / "missing")
    (missing / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactIntegrityError, match=rf"safetensors is missing \(expected sha256 {expected}"):
        _predict(tiny_session, missing)
    record_fault(request.node.name, fault="adapter weights corrupted or deleted after the save",
                 injected="last 8 bytes of adapter_model.safetensors zeroed; the file deleted",
                 outcome="failed clearly: the file, the expected and actual sha256 and the fix; no metrics",
                 lost="nothing: never the base model's metrics under the adapter's name",
                 time_lost="the evaluation's start (checked before the base model loads)")


def test_evaluation_never_scores_the_base_model_in_place_of_the_adapter(saved_adapter, tiny_session, tmp_path,
                                                                        request):
    """A wrong folder (empty, absent, the empty string), a folder without manifest, or an adapter whose weights
    reach none of the base's layers: a clear error each time, never the base model's predictions."""
    adapter, _ = saved_adapter
    (tmp_path / "empty").mkdir()
    for wrong in (tmp_path / "empty", tmp_path / "absent", ""):
        with pytest.raises(ArtifactIntegrityError, match=r"No adapter folder|has no manifest\.json"):
            _predict(tiny_session, wrong)
    unlisted = _copy(adapter, tmp_path / "no-manifest")
    (unlisted / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"has no manifest\.json"):
        _predict(tiny_session, unlisted)

    # Valid files and hashes, but LoRA B all zero once loaded: what PEFT gives when no saved weight fits the base.
    from peft import LoraConfig, get_peft_model

    base = tiny_session.load_model()
    untrained = tmp_path / "untrained"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(untrained)
    write_manifest(untrained, folder_checksums(untrained))
    with pytest.raises(ArtifactIntegrityError, match="changes nothing once loaded"):
        _predict(tiny_session, untrained)
    record_fault(request.node.name, fault="evaluation pointed at the wrong adapter folder",
                 injected="empty, absent and '' folders; manifest deleted; an adapter whose weights fit no layer",
                 outcome="failed clearly: named folder and fix, never the base model's metrics",
                 lost="nothing", time_lost="none: refused before any prediction")


def test_the_catalog_adapter_refuses_bytes_that_differ_from_their_manifest(saved_adapter, tmp_path, request):
    adapter, _ = saved_adapter
    files = {name: (adapter / name).read_bytes() for name in SAVED_ADAPTER_FILES}
    target = AdapterDataset(filepath=str(tmp_path / "adapter"))
    with pytest.raises(DatasetError) as caught:  # Kedro wraps it; the CLI shows the user error it was raised from
        target.save({**files, "adapter_model.safetensors": files["adapter_model.safetensors"][:-1]})
    error = find_user_error(caught.value)
    assert isinstance(error, ArtifactIntegrityError)
    assert f"{tmp_path / 'adapter' / 'adapter_model.safetensors'} is not the file that was saved" in error.what
    assert not (tmp_path / "adapter").exists() and list(tmp_path.iterdir()) == []
    unlisted = {name: content for name, content in files.items() if name != MANIFEST_NAME}
    target.save(unlisted)  # an adapter handed on without its manifest gets one from its bytes
    assert verify_manifest(tmp_path / "adapter")["sha256"] == json.loads(files[MANIFEST_NAME])["sha256"]
    record_fault(request.node.name, fault="adapter bytes changed between training and the catalog's save",
                 injected="last byte of the weights dropped before AdapterDataset.save",
                 outcome="failed clearly: sha256 mismatch named, no adapter folder written",
                 lost="nothing", time_lost="the save")


def test_the_4bit_rung_s_adapter_is_scored_on_a_4bit_base_where_cuda_allows(saved_adapter, tiny_session, tmp_path):
    """An adapter that training fell back to QLoRA for (manifest quantization=4bit) is evaluated on the 4-bit
    base on CUDA, and on CPU (no bitsandbytes) on the full-precision base with a warning."""
    adapter, _ = saved_adapter
    qlora = _copy(adapter, tmp_path / "qlora")
    manifest = json.loads((qlora / MANIFEST_NAME).read_text())
    write_manifest(qlora, manifest["sha256"], base_model=manifest["base_model"], precision="4bit-nf4",
                   quantization="4bit")
    assert tiny_session.for_adapter(qlora) is tiny_session  # CPU
    cuda = model_session.replace(tiny_session, plan=ComputePlan("cuda", torch.bfloat16, True, False, False, "faked"))
    assert cuda.for_adapter(qlora).plan.load_in_4bit and not cuda.for_adapter(adapter).plan.load_in_4bit
