"""The MLflow run a user reads: names and tag columns, data set inputs, each setting once, label-agnostic
metric names, the held-out loss curve, the adapter's layout, and runs that end KILLED or are found stale."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from finetune_predictor import tracking
from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.modeling.training import build_training_rows, train_lora
from finetune_predictor.settings_schema import TrainingSettings
from finetune_predictor.tasks import BinaryClassificationTask
from finetune_predictor.tasks.multiclass_classification import MulticlassClassificationTask
from finetune_predictor.tracking.lifecycle import RunLifecycleHook, readable_run_params
from tests.conftest import copy_project

TAG_COLUMNS = {"task", "family", "n", "lr", "r", "variant", "seed"}


# --- one mini_test100 run through Kedro's session, with the project's hooks, on a tiny Llama -----------------


@pytest.fixture(scope="module")
def mini_run(tiny_model_dir, tmp_path_factory):
    """``mini_test100`` as ``kedro run`` runs it (settings.py's hooks, kedro-mlflow's run), on a tiny Llama
    registered under a friendly name with an HF id; returns the finished MLflow run and the project."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path_factory.mktemp("tracked") / "project", with_source=False)
    params = {
        "model": {"name": "tiny-llama", "max_length": 256},
        "model_registry": {"tiny-llama": {"path": str(tiny_model_dir), "hf_id": "org/tiny-llama", "params_b": 0.001}},
        "data": {"train_per_class": 3, "test_per_class": 3, "synthetic": {"num_records": 120}},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 0.01, "warmup_ratio": 0.0,
                     "eval_steps": 1, "precision": "fp32"},
        "evaluation": {"batch_size": 8, "max_new_tokens": 3, "engine": "hf"},
    }
    cwd, environ = Path.cwd(), dict(os.environ)
    os.chdir(project)  # the catalog's paths are relative to the working directory, as under `kedro run`
    try:
        bootstrap_project(project)
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            session.run(pipeline_names=["mini_test100"])
        # kedro-mlflow reopened its run before every node, and in-process the finished run stayed "active".
        assert mlflow.active_run() is None
        mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
        (run,) = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT_NAME], output_format="list")
        client = mlflow.tracking.MlflowClient()
        yield run, client, project
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        mlflow.set_tracking_uri("")
        mlflow.tracking.fluent._active_experiment_id = None  # kedro-mlflow set this store's experiment


def test_runs_are_told_apart_by_name_and_tag_columns(mini_run):
    run, client, _ = mini_run
    assert run.info.status == "FINISHED"
    # What differs between runs comes first; the model (the same in most runs) last.
    assert run.info.run_name == "n=6 lr=1e-02 r=8 a=32 ep=3 seed=42 | bundled-synthetic-news | tiny-llama"
    tags = run.data.tags
    assert {key: tags[key] for key in TAG_COLUMNS} == {
        "task": "binary_classification", "family": "bundled-synthetic-news-standard", "n": "6", "lr": "0.01",
        "r": "8", "variant": "clean", "seed": "42"}
    assert tags["runner"] == "SequentialRunner"  # not "<kedro.runner...object at 0x...>"
    assert tags[tracking.PID_TAG] == str(os.getpid()) and tags[tracking.HOST_TAG]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING_KIND


def test_train_and_test_sets_are_dataset_inputs_with_the_logged_hash(mini_run):
    run, _, _ = mini_run
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "test"}
    assert inputs["training"].digest == run.data.params["train_sha256"][:16]
    assert inputs["test"].digest == run.data.params["test_sha256"][:16]
    assert inputs["training"].name == "bundled-synthetic-news_train"
    assert json.loads(inputs["test"].profile)["num_rows"] == 6


def test_each_setting_is_logged_once_and_only_the_model_used(mini_run):
    run, _, _ = mini_run
    params = run.data.params
    assert not [key for key in params if key.startswith(("model_registry.", "parameters."))]
    # The resolved registry entry of the model used, nothing of the other registered models.
    assert params["model.registry.hf_id"] == "org/tiny-llama" and params["model.registry.params_b"] == "0.001"
    assert not [key for key in params if "SmolLM2" in key or "Llama-3.1" in key]
    # The run record's names, not a second copy under the setting's path.
    for duplicate in ("training.learning_rate", "training.lora.r", "model.name", "training.seed", "data.task"):
        assert duplicate not in params, duplicate
    assert (params["learning_rate"], params["lora_r"], params["model_name"], params["seed"]) == (
        "0.01", "8", "tiny-llama", "42")
    # Requested and resolved values live under two names (MLflow refuses to change a param).
    assert params["training.precision"] == "fp32" and params["precision"] == "fp32"
    assert params["training.lora.target_modules"] == "auto" and params["lora_target_modules"] == "all-linear"
    assert params["training.warmup_ratio"] == "0.0" and params["data.train_per_class"] == "3"


def test_per_class_metrics_have_label_agnostic_names(mini_run):
    run, _, _ = mini_run
    metrics = run.data.metrics
    for side in ("baseline", "finetuned"):
        assert metrics[f"{side}_f1_positive"] == metrics[f"{side}_f1_fake"]
        assert metrics[f"{side}_recall_negative"] == metrics[f"{side}_recall_legitimate"]
        assert metrics[f"{side}_predicted_share_positive"] == metrics[f"{side}_predicted_share_fake"]
    assert metrics["accuracy_gain"] == round(metrics["accuracy_gain"], 12)


def test_training_and_held_out_loss_are_step_histories(mini_run):
    run, client, _ = mini_run
    train = client.get_metric_history(run.info.run_id, "train_loss")
    held_out = client.get_metric_history(run.info.run_id, "test_loss")
    assert [m.step for m in train] == [1, 2]
    assert [m.step for m in held_out] == [1, 2]  # every eval_steps=1 step
    assert "validation_loss" not in run.data.metrics  # mini_test100 has no validation set


def test_adapter_sits_at_adapter_and_names_its_hub_base(mini_run):
    run, client, _ = mini_run
    files = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert files == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/manifest.json"}
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="adapter/adapter_config.json")
    assert json.loads(Path(local).read_text())["base_model_name_or_path"] == "org/tiny-llama"


# --- the pieces, each on its own -----------------------------------------------------------------------------


def test_settings_params_take_the_record_names_and_the_used_registry_entry():
    registry = {"a": {"hf_id": "org/a", "params_b": 1.0}, "b": {"hf_id": "org/b"}}
    settings = {"model": {"name": "a", "max_length": 128}, "model_registry": registry,
                "training": {"learning_rate": 1e-3, "lora": {"r": 4}, "precision": "auto"},
                "data": {"task": "binary_classification", "train_per_class": 5}}
    params = tracking.settings_params(settings, with_record=True)
    assert params["model.registry.hf_id"] == "org/a" and not any(str(v) == "org/b" for v in params.values())
    assert params["lora_r"] == 4 and "training.lora.r" not in params and params["training.precision"] == "auto"
    assert params["data_variant"] == "clean" and params["max_length"] == 128
    # A sweep of two models logs both entries, each under its name; without a record, settings keep their paths.
    sweep = tracking.settings_params({**settings, "sensitivity": {"models": ["a", "b"]}}, with_record=False)
    assert sweep["model.registry.b.hf_id"] == "org/b" and sweep["training.lora.r"] == 4
    assert sweep["sensitivity.models"] == "a,b"


def test_a_users_own_keys_become_valid_param_names(store):
    """data.label_map keys are raw labels ("pants on fire!"): logged as they were, MLflow refused the run's start."""
    settings = {"data": {"label_map": {"pants on fire!": "fake", "half-true": "real"},
                         "schema": {"date/time": "string"}}}
    params = tracking.settings_params(settings, with_record=False)
    assert params["data.label_map.pants on fire_"] == "fake" and params["data.label_map.half-true"] == "real"
    with mlflow.start_run(experiment_id=store) as run:
        tracking.log_params(run.info.run_id, params)
    assert mlflow.get_run(run.info.run_id).data.params["data.schema.date/time"] == "string"


def test_start_params_agree_with_the_record_logged_at_the_end(store):
    """MLflow refuses a param logged twice with two values: what the start logs must be what the record logs."""
    training = {"learning_rate": 2e-3, "num_train_epochs": 2, "seed": 7, "precision": "auto"}
    settings = {"model": {"name": "m"}, "training": training, "data": {}}
    split = {"source": "s.jsonl", "test_source": "t", "test_sha256": "x" * 64, "train_size": 4, "test_size": 2,
             "train_sha256": "y" * 64, "family": "f"}
    summary = {"precision": "fp32", "model_source": "local", "device": "cpu", "loss_history": [],
               "train_runtime_s": 1.0, "peak_memory_mb": 1.0, "adapter_sha256": {"adapter_model.safetensors": "z"}}
    record = tracking.build_run_record(split, summary, {"baseline": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.8}},
                                       {"name": "m"}, training, {})
    with mlflow.start_run(experiment_id=store) as run:
        tracking.log_params(run.info.run_id, tracking.settings_params(settings, with_record=True))
        tracking.log_params(run.info.run_id, tracking.split_configuration(split))
        tracking.log_record(run.info.run_id, record)
        with pytest.raises(ValueError, match=r"other values .*'learning_rate': \('0.002', '0.1'\)"):
            tracking.log_params(run.info.run_id, {"learning_rate": 0.1})
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.params["training.precision"] == "auto" and logged.data.params["precision"] == "fp32"
    assert logged.data.metrics["accuracy_gain"] == 0.3  # not 0.30000000000000004
    assert logged.data.tags["mlflow.runName"].startswith("n=4 lr=2e-03")
    assert {"family", "n", "lr", "seed", "variant"} <= set(logged.data.tags)


def test_runner_tag_is_the_class_name():
    assert readable_run_params({"runner": "<kedro.runner.sequential_runner.SequentialRunner object at 0x7f0>"})[
        "runner"] == "SequentialRunner"
    assert readable_run_params({"runner": "ParallelRunner"})["runner"] == "ParallelRunner"


def test_experiment_is_marked_model_training_and_links_open_that_view(store):
    tracking.mark_model_training_experiment(store)
    assert mlflow.get_experiment(store).tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracking.ui_url(store, "abc") == (f"http://127.0.0.1:5000/#/experiments/{store}/runs/abc"
                                            "?workflowType=machine_learning")


def test_label_agnostic_names_for_binary_and_multiclass():
    binary = BinaryClassificationTask("real", "fake")  # the positive label second in the alphabet
    metrics = binary.metrics(["real", "fake", "real"], ["real", "real", None])
    assert metrics["f1_positive"] == metrics["f1_real"] and metrics["support_negative"] == metrics["support_fake"] == 1
    multi = MulticlassClassificationTask(("true", "false", "half-true"))
    metrics = multi.metrics(["true", "false", "half-true"], ["true", "false", "false"])
    # class<i> by sorted label: false, half-true, true
    assert (metrics["recall_class0"], metrics["recall_class1"], metrics["recall_class2"]) == (
        metrics["recall_false"], metrics["recall_half_true"], metrics["recall_true"])


def test_comparison_table_lists_per_class_rows_once():
    from finetune_predictor.pipelines.evaluation.nodes import comparison_table

    side = {"accuracy": 0.5, "f1_fake": 0.4, "f1_positive": 0.4, "f1_legitimate": 0.6, "f1_negative": 0.6,
            "confusion_labels": ["fake", "legitimate"]}
    table = comparison_table({"baseline": side, "finetuned": side, "classical": {}})
    assert table["metric"].tolist() == ["accuracy", "f1_fake", "f1_legitimate"]
    # Labels that are themselves role words keep their rows.
    words = {"accuracy": 0.5, "f1_positive": 0.4, "f1_negative": 0.6, "confusion_labels": ["positive", "negative"]}
    assert comparison_table({"baseline": words, "finetuned": words})["metric"].tolist() == [
        "accuracy", "f1_positive", "f1_negative"]


def _rows(formatter, n: int, seed: int):
    records = list(iter_articles(n, seed=seed))
    return build_training_rows(formatter, records, [r["output"] for r in records])


def test_held_out_loss_curve_does_not_change_what_is_trained(tiny_session, tmp_path):
    rows, held_out = _rows(tiny_session.formatter, 8, 5), _rows(tiny_session.formatter, 4, 6)
    values = {"max_steps": 3, "per_device_train_batch_size": 4, "precision": "fp32", "learning_rate": 1e-2,
              "eval_steps": 2}
    plain = train_lora(tiny_session, rows, TrainingSettings.from_params(values), tmp_path / "plain")
    curve = train_lora(tiny_session, rows, TrainingSettings.from_params(values), tmp_path / "curve",
                       eval_rows=held_out)
    assert [h["step"] for h in curve.eval_loss_history] == [2.0, 3.0]  # every eval_steps=2 and after the last
    assert plain.eval_loss_history == []
    assert [h["loss"] for h in curve.loss_history] == [h["loss"] for h in plain.loss_history]
    assert curve.adapter_sha256["adapter_model.safetensors"] == plain.adapter_sha256["adapter_model.safetensors"]
    off = train_lora(tiny_session, rows, TrainingSettings.from_params({**values, "eval_steps": 0}), tmp_path / "off",
                     eval_rows=held_out)
    assert off.eval_loss_history == []


def test_adapter_config_names_a_portable_base(tiny_model_dir, tmp_path):
    """PEFT writes the folder the base was loaded from (a cache path of the training machine); the adapter
    must name the registry's hub id, and the project must still load it onto its own base."""
    from finetune_predictor.modeling.model_session import open_session

    registry = {"tiny": {"path": str(tiny_model_dir), "hf_id": "org/tiny"}}
    session = open_session({"name": "tiny", "max_length": 256}, registry, "train", "fp32")
    settings = TrainingSettings.from_params({"max_steps": 1, "per_device_train_batch_size": 4, "precision": "fp32",
                                             "learning_rate": 1e-2})
    result = train_lora(session, _rows(session.formatter, 4, 5), settings, tmp_path)
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny"
    assert str(tiny_model_dir) not in "".join(p.read_text() for p in result.adapter_dir.glob("*.json"))
    assert session.with_purpose("evaluate").load_model(result.adapter_dir) is not None


def test_sigint_ends_the_run_and_its_child_killed(store):
    parent = mlflow.start_run(experiment_id=store)
    hook = RunLifecycleHook()
    hook.run_id = parent.info.run_id
    before = signal.getsignal(signal.SIGINT)
    hook._install_signal_handlers()
    with pytest.raises(KeyboardInterrupt), tracking.child_run(store, parent.info.run_id, "child", {}) as child_id:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler runs at the next bytecode
    assert signal.getsignal(signal.SIGINT) is before
    for run_id in (parent.info.run_id, child_id):
        run = mlflow.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["run_failure"] == "interrupted by SIGINT"
    assert mlflow.active_run() is None


def test_sigterm_ends_the_run_killed_and_exits_143(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    script = textwrap.dedent(f"""
        import os, signal, time, mlflow
        from finetune_predictor.tracking.lifecycle import RunLifecycleHook
        mlflow.set_tracking_uri({uri!r})
        run = mlflow.start_run(experiment_id=mlflow.set_experiment("finetune_predictor").experiment_id)
        hook = RunLifecycleHook()
        hook.run_id = run.info.run_id
        hook._install_signal_handlers()
        print("RUN_ID=" + run.info.run_id, flush=True)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        finally:
            print("cleaned up", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 143, result.stderr[-2000:]
    run_id, cleaned = re.search(r"RUN_ID=(\w+)", result.stdout).group(1), "cleaned up" in result.stdout
    mlflow.set_tracking_uri(uri)
    try:
        run = mlflow.get_run(run_id)
    finally:
        mlflow.set_tracking_uri("")
    assert cleaned and run.info.status == "KILLED" and run.data.tags["run_failure"] == "interrupted by SIGTERM"


def test_stale_running_runs_are_marked_failed_at_start(store):
    import socket

    client = mlflow.tracking.MlflowClient()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = socket.gethostname()

    def running(tags):
        return client.create_run(store, tags=tags).info.run_id

    dead = running({tracking.HOST_TAG: host, tracking.PID_TAG: str(finished.pid)})
    alive = running({tracking.HOST_TAG: host, tracking.PID_TAG: str(os.getpid())})
    elsewhere = running({tracking.HOST_TAG: "another-host", tracking.PID_TAG: str(finished.pid)})
    untagged = running({})
    # The pid of this process, but a run that started before this process did: another process had the id.
    reused = client.create_run(store, start_time=1000,
                               tags={tracking.HOST_TAG: host, tracking.PID_TAG: str(os.getpid())}).info.run_id
    assert sorted(tracking.mark_stale_runs_failed(store, current_run_id=alive)) == sorted([dead, reused])
    statuses = {run_id: client.get_run(run_id).info.status for run_id in (dead, alive, elsewhere, untagged, reused)}
    assert statuses == {dead: "FAILED", alive: "RUNNING", elsewhere: "RUNNING", untagged: "RUNNING",
                        reused: "FAILED"}
    assert client.get_run(dead).data.tags["run_failure"].startswith(f"interrupted: process {finished.pid}")


def test_log_dataset_records_schema_rows_context_and_digest(store):
    frame = pd.DataFrame({"id": ["a", "b"], "instruction": ["q", "q"], "input": ["x", "y"], "output": ["fake", "real"]})
    with mlflow.start_run(experiment_id=store) as run:
        tracking.log_dataset(run.info.run_id, frame, "data/d.jsonl", "train", "training", "f" * 64)
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("d_train", "f" * 16)
    assert [t.value for t in logged.tags] == ["training"]
    assert json.loads(logged.dataset.profile)["num_rows"] == 2


def test_split_names_the_run_and_logs_its_data_whichever_is_saved_first(store):
    """A run interrupted after its data split already carries its record's name, split params and inputs."""
    hook = RunLifecycleHook()
    hook._record_settings = {"model": {"name": "m"}, "training": {"learning_rate": 1e-3, "seed": 3}, "data": {}}
    frame = pd.DataFrame({"id": ["a"], "instruction": ["q"], "input": ["x"], "output": ["fake"]})
    summary = {"source": "data/news.jsonl", "family": "news", "test_source": "held-out split of the training source",
               "train_size": 1, "test_size": 1, "train_sha256": "a" * 64, "test_sha256": "b" * 64}
    with mlflow.start_run(experiment_id=store) as run:
        hook.run_id = run.info.run_id
        hook.after_dataset_saved("data_engineering.prm.train_set", frame)  # before its summary: kept until then
        hook.after_dataset_saved("data_engineering.reporting.split_summary", summary)
        hook.after_dataset_saved("data_engineering.prm.test_set", frame)  # after it: logged at once
    logged = mlflow.get_run(run.info.run_id)
    assert logged.info.run_name == "n=1 lr=1e-03 r=8 a=32 ep=3 seed=3 | news | m"
    assert (logged.data.tags["n"], logged.data.tags["family"], logged.data.params["dataset"]) == (
        "1", "news", "data/news.jsonl")
    digests = {d.dataset.name: d.dataset.digest for d in logged.inputs.dataset_inputs}
    assert digests == {"news_train": "a" * 16, "news_test": "b" * 16}
