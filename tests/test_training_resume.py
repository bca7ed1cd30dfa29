"""Interrupted fine-tunes resume from their last complete checkpoint and end where an uninterrupted one ends.

Tiny random Llama, fp32, 6 rows in batches of 2 (3 optimiser steps per epoch), 8 steps, LoRA dropout on,
length-grouped batches, the held-out curve every 3 steps, warm-up and a linear schedule: the resumed run
has to restore the adapter, optimizer, scheduler, RNG states and the batch order of the resumed epoch to
match the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.modeling import checkpoints
from finetune_predictor.modeling.training import build_training_rows, train_lora
from finetune_predictor.settings_schema import TrainingSettings
from tests.conftest import PROJECT_ROOT
from tests.reliability import record_fault

SETTINGS = {"max_steps": 8, "per_device_train_batch_size": 2, "precision": "fp32", "learning_rate": 1e-2,
            "warmup_ratio": 0.25, "eval_steps": 3, "checkpoint_steps": 2,
            "lora": {"r": 2, "alpha": 4, "dropout": 0.1}}


class Interrupt(TrainerCallback):
    """Ctrl-C at the end of optimiser step ``step`` (``when="step"``), or while the Trainer saves the
    checkpoint of that step (``when="save"``: its files are written, its marker is not)."""

    def __init__(self, step: int, when: str = "step") -> None:
        self.step, self.when = step, when

    def on_step_end(self, args, state, control, **kwargs):
        if self.when == "step" and state.global_step == self.step:
            raise KeyboardInterrupt

    def on_save(self, args, state, control, **kwargs):
        if self.when == "save" and state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def rows(tiny_session):
    train = list(iter_articles(6, seed=5))
    held_out = list(iter_articles(4, seed=9))
    formatter = tiny_session.formatter
    return (build_training_rows(formatter, train, [r["output"] for r in train]),
            build_training_rows(formatter, held_out, [r["output"] for r in held_out]))


def _train(session, rows, folder, checkpoint_dir=None, callbacks=(), **overrides):
    train_rows, eval_rows = rows
    settings = TrainingSettings.from_params({**SETTINGS, **overrides})
    return train_lora(session, train_rows, settings, folder, callbacks=callbacks, eval_rows=eval_rows,
                      checkpoint_dir=checkpoint_dir)


@pytest.fixture(scope="module")
def uninterrupted(tiny_session, rows, tmp_path_factory):
    """The reference: the same training without checkpoints and without interruption."""
    return _train(tiny_session, rows, tmp_path_factory.mktemp("uninterrupted"))


def _assert_same_training(result, reference):
    assert result.num_steps == reference.num_steps == 8
    assert [h["step"] for h in result.loss_history] == [float(s) for s in range(1, 9)]  # every step, once
    for got, want in zip(result.loss_history, reference.loss_history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert got["learning_rate"] == pytest.approx(want["learning_rate"], abs=1e-12)
    assert [h["step"] for h in result.eval_loss_history] == [3.0, 6.0, 8.0]
    assert [h["loss"] for h in result.eval_loss_history] == pytest.approx(
        [h["loss"] for h in reference.eval_loss_history], abs=1e-6)
    got = load_file(result.adapter_dir / "adapter_model.safetensors")
    want = load_file(reference.adapter_dir / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)


def _steps(folder: Path) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in folder.glob("checkpoint-*"))


def test_checkpoints_change_nothing_that_is_trained(tiny_session, rows, uninterrupted, tmp_path):
    """Saving every 2 steps (the last two kept, each with its marker) trains exactly what no checkpointing does."""
    result = _train(tiny_session, rows, tmp_path / "work", tmp_path / "checkpoints")
    _assert_same_training(result, uninterrupted)
    assert result.resume.step == 0
    assert _steps(tmp_path / "checkpoints") == [6, 8]  # the final step too: a run killed while evaluated trains nothing
    assert (tmp_path / "checkpoints" / "checkpoint-8" / checkpoints.MARKER).is_file()


def test_interrupted_fine_tune_resumes_from_its_last_checkpoint(tiny_session, rows, uninterrupted, tmp_path,
                                                                request):
    """Ctrl-C after step 5 (in the second epoch): the same call resumes from step 4, skips the batch it had
    trained in that epoch, and ends with the uninterrupted run's losses, held-out curve and LoRA weights."""
    folder = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_session, rows, tmp_path / "first", folder, callbacks=[Interrupt(5)])
    assert _steps(folder) == [2, 4]
    result = _train(tiny_session, rows, tmp_path / "second", folder)
    assert result.resume.step == 4 and result.resume.checkpoint == folder / "checkpoint-4"
    _assert_same_training(result, uninterrupted)
    record_fault(request.node.name, fault="interruption mid-training (SIGINT)",
                 injected="KeyboardInterrupt after optimiser step 5 of 8 (tiny Llama, fp32, in-process)",
                 outcome="resumed from the step-4 checkpoint: losses, held-out curve and LoRA weights equal the "
                         "uninterrupted run's (1e-6)",
                 lost="nothing", time_lost="interrupted at step 5 of 8 -> 1 step re-run")


def test_resume_at_an_epoch_boundary_and_twice(tiny_session, rows, uninterrupted, tmp_path, request):
    """Interrupted at step 5, resumed, interrupted again at step 7 (the step-6 checkpoint ends an epoch),
    resumed again: the same run as the uninterrupted one."""
    folder = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_session, rows, tmp_path / "first", folder, callbacks=[Interrupt(5)])
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_session, rows, tmp_path / "second", folder, callbacks=[Interrupt(7)])
    result = _train(tiny_session, rows, tmp_path / "third", folder)
    assert result.resume.step == 6
    _assert_same_training(result, uninterrupted)
    record_fault(request.node.name, fault="interruption mid-training, twice",
                 injected="KeyboardInterrupt after step 5 of 8, then after step 7 of the resumed run",
                 outcome="resumed twice (from step 4, then from step 6 at an epoch's end): the uninterrupted run's "
                         "losses and weights",
                 lost="nothing", time_lost="interrupted at steps 5 and 7 of 8 -> 2 steps re-run")


@pytest.mark.parametrize("overrides", [{"group_by_length": False}, {"loss_window": "full"}],
                         ids=["random_order", "trl_stock_loss"])
def test_resume_is_exact_with_random_order_and_trl_loss(tiny_session, rows, tmp_path, overrides):
    """Batches in random order (accelerate's seeded sampler) and TRL's stock collator and loss resume exactly too."""
    reference = _train(tiny_session, rows, tmp_path / "reference", **overrides)
    folder = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_session, rows, tmp_path / "first", folder, callbacks=[Interrupt(5)], **overrides)
    result = _train(tiny_session, rows, tmp_path / "second", folder, **overrides)
    assert result.resume.step == 4
    _assert_same_training(result, reference)


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_killed_after_training_but_before_the_run_is_complete_trains_nothing_again(tiny_session, rows, uninterrupted,
                                                                                   tmp_path, request):
    """The checkpoint of the last step stays until the caller's run is complete: a run killed while it is
    evaluated resumes at step 8 of 8, trains no step, and has the same curve, adapter and cost."""
    folder = tmp_path / "checkpoints"
    first = _train(tiny_session, rows, tmp_path / "first", folder)  # trained; then killed while evaluated
    counter = CountSteps()
    again = _train(tiny_session, rows, tmp_path / "again", folder, callbacks=[counter])
    assert again.resume.step == 8 and counter.steps == 0
    _assert_same_training(again, uninterrupted)
    assert again.train_runtime_s >= first.train_runtime_s * 0.5  # the steps kept count in its cost
    record_fault(request.node.name, fault="killed after training, while the run is evaluated",
                 injected="the same fine-tune called again with the completed run's checkpoint folder",
                 outcome="resumed at step 8 of 8: no step trained again, the same losses and adapter",
                 lost="nothing", time_lost="0 training steps re-run (the evaluation runs again)")


def test_a_checkpoint_half_written_when_killed_is_skipped(tiny_session, rows, uninterrupted, tmp_path, request):
    """Stopped while the step-6 checkpoint is saved (files written, no marker yet): the next run skips and
    removes it, and resumes from the complete step-4 checkpoint."""
    folder = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_session, rows, tmp_path / "first", folder, callbacks=[Interrupt(6, when="save")])
    assert _steps(folder) == [4, 6] and not (folder / "checkpoint-6" / checkpoints.MARKER).exists()
    result = _train(tiny_session, rows, tmp_path / "second", folder)
    assert result.resume.step == 4
    _assert_same_training(result, uninterrupted)
    record_fault(request.node.name, fault="killed while a checkpoint is written",
                 injected="KeyboardInterrupt inside the Trainer's save of the step-6 checkpoint (no marker yet)",
                 outcome="resumed from the last complete checkpoint (step 4); the half-written one is removed",
                 lost="nothing", time_lost="interrupted at step 6 of 8 -> 2 steps re-run")


def test_a_checkpoint_of_another_training_is_never_resumed(tiny_session, rows, uninterrupted, tmp_path, caplog,
                                                          request):
    """The same folder, another learning rate: the other training's checkpoints are never resumed, and the run
    is the one this configuration gives from its first step. They are kept, not removed: an out-of-memory
    ladder restarted after a kill walks its rungs again (other micro-batches, so other trainings of one folder),
    and the rung that had trained must still find its checkpoints."""
    folder = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_session, rows, tmp_path / "first", folder, callbacks=[Interrupt(5)])
    with (caplog.at_level(logging.WARNING, logger="finetune_predictor.modeling.checkpoints"),
          pytest.raises(KeyboardInterrupt)):
        _train(tiny_session, rows, tmp_path / "other", folder, learning_rate=5e-3, callbacks=[Interrupt(1)])
    assert caplog.text.count("was written by another training") == 2  # checkpoint-2 and checkpoint-4
    assert _steps(folder) == [2, 4]  # kept
    resumed = _train(tiny_session, rows, tmp_path / "again", folder)
    assert resumed.resume.step == 4
    _assert_same_training(resumed, uninterrupted)
    other = _train(tiny_session, rows, tmp_path / "other2", folder, learning_rate=5e-3)
    fresh = _train(tiny_session, rows, tmp_path / "fresh", None, learning_rate=5e-3)
    assert other.resume.step == 0
    assert [h["loss"] for h in other.loss_history] == pytest.approx([h["loss"] for h in fresh.loss_history], abs=1e-6)
    record_fault(request.node.name, fault="a checkpoint of another configuration in the folder",
                 injected="checkpoints of lr=1e-2 left in the folder of a lr=5e-3 fine-tune",
                 outcome="refused: never resumed from (kept for its own training, which resumes from it later); "
                         "the run trains from step 0 and equals a fresh one",
                 lost="nothing", time_lost="none (another configuration has nothing to resume)")


def test_a_checkpoint_whose_files_changed_is_skipped(tmp_path):
    """A checkpoint whose file sizes differ from its marker (a truncated or damaged file) is not resumed from;
    the newest whole one is."""
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        checkpoint = folder / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        for name in checkpoints.REQUIRED_FILES:
            (checkpoint / name).write_bytes(b"x" * step)
        torch.save(torch.get_rng_state(), checkpoint / checkpoints.EPOCH_RNG)
        sizes = {path.name: path.stat().st_size for path in checkpoint.iterdir()}
        (checkpoint / checkpoints.MARKER).write_text(json.dumps({"key": "k", "step": step, "files": sizes}))
    (folder / "checkpoint-4" / "optimizer.pt").write_bytes(b"x")  # truncated
    resume = checkpoints.CheckpointFolder(folder, "k", None).resume_point()
    assert resume.step == 2 and not (folder / "checkpoint-4").exists()
    assert checkpoints.CheckpointFolder(folder, "other", None).problem(folder / "checkpoint-2").startswith(
        "was written by another training")


def test_a_folder_in_use_by_another_process_is_left_alone(tiny_session, rows, tmp_path, caplog):
    """Two processes training the same configuration at once: the second trains without checkpoints rather
    than rotating the first one's away."""
    from filelock import FileLock

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    held = FileLock(str(folder / ".lock"))
    held.acquire()
    try:
        with caplog.at_level(logging.WARNING, logger="finetune_predictor.modeling.checkpoints"):
            result = _train(tiny_session, rows, tmp_path / "work", folder, max_steps=2)
        checkpoints.discard(folder)  # this process did not use it: the other one's folder stays
        assert folder.is_dir()
    finally:
        held.release()
    assert result.num_steps == 2 and _steps(folder) == []
    assert "Another process is training" in caplog.text
    checkpoints.discard(folder)
    assert not folder.exists()


def test_checkpointing_off_keeps_no_checkpoint(tiny_session, rows, tmp_path):
    result = _train(tiny_session, rows, tmp_path / "work", tmp_path / "checkpoints", max_steps=2, checkpoint_steps=0)
    assert result.num_steps == 2 and not (tmp_path / "checkpoints").exists()


# --- mini_test100's fine-tune: its checkpoint folder, and the MLflow runs it supersedes ------------------------


def test_mini_test100_fine_tune_resumes_and_names_the_run_it_supersedes(tiny_model_dir, tmp_path, monkeypatch,
                                                                        request):
    """The sft_training node, interrupted inside MLflow run A, then the same node inside run B: B's training
    resumes from A's step-4 checkpoint in ``training.checkpoint_dir/<key>``, names A as the run it supersedes,
    ends with the loss curve of an uninterrupted node, and the checkpoint folder is gone afterwards."""
    import pandas as pd

    from finetune_predictor import tracking
    from finetune_predictor.pipelines.sft_training import nodes

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(tracking.EXPERIMENT_NAME)  # never an experiment id another test's store left active
    train = pd.DataFrame(list(iter_articles(6, seed=5)))
    test = pd.DataFrame(list(iter_articles(4, seed=9)))
    model = {"name": str(tiny_model_dir), "max_length": 256}
    data = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"}
    training = {**SETTINGS, "checkpoint_dir": str(tmp_path / "checkpoints")}
    original = nodes.fine_tune
    try:
        monkeypatch.setattr(nodes, "fine_tune", lambda *a, **k: original(*a, callbacks=[Interrupt(5)], **k))
        with pytest.raises(KeyboardInterrupt), mlflow.start_run() as interrupted:
            nodes.train_adapter(train, test, model, {}, training, data)
        (folder,) = (tmp_path / "checkpoints").iterdir()
        assert _steps(folder) == [2, 4]
        monkeypatch.setattr(nodes, "fine_tune", original)
        with mlflow.start_run() as resumed:
            _files, summary = nodes.train_adapter(train, test, model, {}, training, data)
        assert not folder.exists()  # deleted once the adapter is read
        _files, reference = nodes.train_adapter(train, test, model, {}, {**training, "checkpoint_steps": 0}, data)
        assert summary["resumed_from_step"] == 4 and reference["resumed_from_step"] == 0
        assert summary["superseded_run_ids"] == [interrupted.info.run_id]
        assert [h["loss"] for h in summary["loss_history"]] == pytest.approx(
            [h["loss"] for h in reference["loss_history"]], abs=1e-6)
        assert summary["adapter_sha256"] == reference["adapter_sha256"]  # the same adapter, byte for byte
        assert tracking.resume_provenance(summary) == {"resumed_from_step": 4, "supersedes": interrupted.info.run_id}
        assert tracking.resume_provenance(reference) == {}
        tracking.mark_superseded(resumed.info.run_id, summary["superseded_run_ids"])
        old = mlflow.get_run(interrupted.info.run_id)
        assert old.data.tags["superseded_by"] == resumed.info.run_id and old.info.status != "FINISHED"
    finally:
        mlflow.set_tracking_uri("")
    record_fault(request.node.name, fault="interruption mid-training (mini_test100's fine-tune)",
                 injected="KeyboardInterrupt after step 5 of 8 in the sft_training node, inside an MLflow run",
                 outcome="resumed from step 4 (training.checkpoint_dir/<key>); the same adapter bytes; the new "
                         "run names the interrupted one, which is tagged superseded_by",
                 lost="nothing", time_lost="interrupted at step 5 of 8 -> 1 step re-run")


# --- a real SIGKILL / SIGINT of a sweep process, then the same sweep again -------------------------------------

SWEEP_SCRIPT = textwrap.dedent('''
    """One-configuration sweep on the tiny model; the fine-tune signals its own process at step KILL_STEP."""
    import json, os, signal, sys

    import mlflow
    from transformers import TrainerCallback

    from finetune_predictor.data import task_data
    from finetune_predictor.pipelines.sensitivity import configuration_run, runner

    model_dir, store, output, kill_step, signal_name = sys.argv[1:6]
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    data = {"task": "binary_classification", "path": None, "test_path": None, "label_positive": "fake",
            "label_negative": "legitimate", "train_per_class": 100, "test_per_class": 3, "seed": 5,
            "synthetic": {"num_records": 120, "seed": 7}}
    records, _rejects, read_summary = task_data.load_task_records(data)
    sweep_data = runner.SweepData(*task_data.nested_subsets(records, read_summary, data, [4], validation_per_class=2))


    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(kill_step):
                os.kill(os.getpid(), getattr(signal, signal_name))


    original = configuration_run.fine_tune
    configuration_run.fine_tune = lambda *args, **kwargs: original(*args, callbacks=[Kill()], **kwargs)
    sensitivity = {"executor": "sequential", "gpus_per_run": 0, "train_per_class": [4], "learning_rates": [5e-2],
                   "lora": [{"r": 2, "alpha": 4, "dropout": 0.1}], "num_train_epochs": [2], "seeds": [1],
                   "test_per_class": 3, "output_dir": output}
    training = {"per_device_train_batch_size": 2, "precision": "fp32", "warmup_ratio": 0.25, "eval_steps": 3,
                "checkpoint_steps": 2}
    evaluation = {"batch_size": 8, "generation": False, "engine": "hf"}
    outcome = runner.run_sweep(sensitivity, sweep_data, data, {"name": model_dir, "max_length": 256}, {}, training,
                               evaluation, sweep_name="resume")
    print("STATUS " + json.dumps(outcome.status, default=str))
''')


def _sweep_process(script: Path, model_dir: Path, folder: Path, kill_step: int = 0,
                   signal_name: str = "SIGKILL") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT / "src")}
    return subprocess.run([sys.executable, str(script), str(model_dir), str(folder / "mlflow.db"),
                           str(folder / "sweeps"), str(kill_step), signal_name],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=600)


def _status(process: subprocess.CompletedProcess) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    line = next(line for line in process.stdout.splitlines() if line.startswith("STATUS "))
    return json.loads(line.removeprefix("STATUS "))


def _sweep_runs(folder: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    try:
        experiment = mlflow.get_experiment_by_name("finetune_predictor")
        return [run for run in mlflow.search_runs([experiment.experiment_id], output_format="list")
                if run.data.tags.get("sweep_config_key")]
    finally:
        mlflow.set_tracking_uri("")


def _history(folder: Path, run_id: str, metric: str) -> list[tuple[int, float]]:
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    try:
        history = mlflow.tracking.MlflowClient().get_metric_history(run_id, metric)
        return sorted((m.step, m.value) for m in history)
    finally:
        mlflow.set_tracking_uri("")


@pytest.fixture(scope="module")
def sweep_script(tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("script") / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    return script


@pytest.fixture(scope="module")
def reference_sweep(sweep_script, tiny_model_dir, tmp_path_factory) -> tuple[Path, object]:
    """The same one-configuration sweep, never interrupted, in its own store."""
    folder = tmp_path_factory.mktemp("reference")
    assert _status(_sweep_process(sweep_script, tiny_model_dir, folder))["ran"] == 1
    (run,) = _sweep_runs(folder)
    return folder, run


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_a_killed_sweep_resumes_its_fine_tune_and_keeps_one_finished_run(sweep_script, tiny_model_dir,
                                                                         reference_sweep, tmp_path, signal_name,
                                                                         request):
    """The sweep's process gets SIGKILL (or SIGINT) at step 6 of 8; the same sweep in a fresh process resumes the
    fine-tune from step 4: the configuration has one FINISHED run, which names the interrupted one (left FAILED
    or KILLED, tagged superseded_by), and its metrics equal an uninterrupted sweep's."""
    killed = _sweep_process(sweep_script, tiny_model_dir, tmp_path, kill_step=6, signal_name=signal_name)
    assert killed.returncode == -getattr(signal, signal_name), killed.stderr[-3000:]
    (interrupted,) = _sweep_runs(tmp_path)
    key = interrupted.data.tags["sweep_config_key"]
    assert _steps(tmp_path / "sweeps" / key / "checkpoints") == [2, 4]

    status = _status(_sweep_process(sweep_script, tiny_model_dir, tmp_path))
    assert status["ran"] == 1 and status["failed"] == 0
    assert status["interrupted_marked_failed"] == (1 if signal_name == "SIGKILL" else 0)  # SIGINT ended it itself
    runs = {run.info.run_id: run for run in _sweep_runs(tmp_path)}
    finished = [run for run in runs.values() if run.info.status == "FINISHED"]
    assert len(finished) == 1 and len(runs) == 2
    (new,) = finished
    old = runs[interrupted.info.run_id]
    assert old.info.status in ("FAILED", "KILLED") and old.data.tags["superseded_by"] == new.info.run_id
    assert new.data.params["resumed_from_step"] == "4" and new.data.params["supersedes"] == old.info.run_id
    assert not (tmp_path / "sweeps" / key / "checkpoints").exists()  # deleted once the run was complete

    reference_folder, reference = reference_sweep
    assert reference.data.tags["sweep_config_key"] == key and "resumed_from_step" not in reference.data.params
    for metric in ("train_loss", "validation_loss"):
        got, want = _history(tmp_path, new.info.run_id, metric), _history(reference_folder, reference.info.run_id,
                                                                            metric)
        assert [step for step, _ in got] == [step for step, _ in want]
        assert [value for _, value in got] == pytest.approx([value for _, value in want], abs=1e-6)
    assert len(_history(tmp_path, new.info.run_id, "train_loss")) == 8  # every step, before and after the kill
    for metric in ("finetuned_primary", "finetuned_auc", "validation_primary", "baseline_primary"):
        assert new.data.metrics[metric] == pytest.approx(reference.data.metrics[metric], abs=1e-6), metric
    assert new.data.params["adapter_sha256"] == reference.data.params["adapter_sha256"]
    record_fault(request.node.name, fault=f"{signal_name} of a sweep mid-training",
                 injected=f"{signal_name} to the sweep's own process at step 6 of 8 (subprocess), then the same sweep",
                 outcome="resumed from the step-4 checkpoint in a fresh process: one FINISHED run (the killed one "
                         "FAILED/KILLED, superseded_by it), metrics and adapter bytes equal an uninterrupted sweep's",
                 lost="nothing", time_lost="killed at step 6 of 8 -> 2 steps re-run")


def test_a_failure_while_building_the_trainer_frees_the_checkpoint_folder(tiny_session, rows, tmp_path, monkeypatch,
                                                                         caplog):
    """An out-of-memory error loading the model (the ladder's usual case) happens after the folder is locked and
    before training starts: the next rung, in the same process, must find the folder free, not train without
    checkpoints as if another process held it."""
    from finetune_predictor.modeling import training

    real, calls = training.build_trainer, []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "build_trainer", out_of_memory_once)  # looked up in training by train_lora
    folder = tmp_path / "checkpoints"
    # The error is still held (as a ladder's except block holds it) while the next rung starts.
    with pytest.raises(torch.OutOfMemoryError) as failed:
        _train(tiny_session, rows, tmp_path / "first", folder)
    with (caplog.at_level(logging.WARNING, logger="finetune_predictor.modeling.checkpoints"),
          pytest.raises(KeyboardInterrupt)):
        _train(tiny_session, rows, tmp_path / "second", folder, callbacks=[Interrupt(5)])
    assert "Another process is training" not in caplog.text
    assert _steps(folder) == [2, 4] and failed.traceback
