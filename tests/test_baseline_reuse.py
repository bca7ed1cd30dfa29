"""The base model's predictions are computed once per baseline_key and reused by later runs and sweeps."""

from __future__ import annotations

import dataclasses
import shutil

import mlflow
import pandas as pd
import pytest

from finetune_predictor import tracking as run_tracking
from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.modeling import evaluation, model_session, models
from finetune_predictor.modeling.evaluation import baseline_key, metrics_of
from finetune_predictor.modeling.model_session import load_causal_lm, open_session
from finetune_predictor.pipelines.evaluation import nodes
from finetune_predictor.tasks import build_task
from tests.test_sweep import _sweep, tracking  # noqa: F401 (tracking: the fixture with a fresh MLflow store)

DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"}
EVALUATION = {"batch_size": 4, "generation": True, "max_new_tokens": 3, "engine": "hf", "label_scoring": "sum"}


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    """Content hashes cached in the test's folder, not the user's."""
    monkeypatch.setenv("FINETUNE_PREDICTOR_CACHE", str(tmp_path / "cache"))


def _test_set(n: int = 6, seed: int = 2) -> pd.DataFrame:
    frame = pd.DataFrame(list(iter_articles(n, seed=seed)))
    frame["source"], frame["group"] = "s", "g"
    return frame


def _session(model_dir, **model):
    return open_session({"name": str(model_dir), "max_length": 256, **model}, {}, "evaluate", "fp32")


def test_baseline_key_changes_with_everything_that_changes_the_baseline(tiny_model_dir, tmp_path):
    test, session = _test_set(), _session(tiny_model_dir)
    task = build_task(DATA)
    key = baseline_key(test, task, session, EVALUATION)
    assert key == baseline_key(test.copy(), task, _session(tiny_model_dir), dict(EVALUATION))
    # Batches give the same predictions, and reuse itself is no part of what is predicted.
    assert key == baseline_key(test, task, session, {**EVALUATION, "batch_size": 16, "reuse_baseline": False})
    edited = test.copy()
    edited.loc[0, "input"] += " (edited)"
    renamed = test.copy()
    renamed.loc[0, "id"] = "another-id"
    copied_model = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, copied_model)
    config = copied_model / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    changed = {
        "label_scoring": baseline_key(test, task, session, {**EVALUATION, "label_scoring": "calibrated"}),
        "max_new_tokens": baseline_key(test, task, session, {**EVALUATION, "max_new_tokens": 5}),
        "derived budget": baseline_key(test, task, session, {**EVALUATION, "max_new_tokens": None}),
        "generation": baseline_key(test, task, session, {**EVALUATION, "generation": False}),
        "engine": baseline_key(test, task, session, {**EVALUATION, "engine": "vllm"}),
        "test content": baseline_key(edited, task, session, EVALUATION),
        "test ids": baseline_key(renamed, task, session, EVALUATION),
        "labels": baseline_key(test, build_task({**DATA, "label_positive": "false"}), session, EVALUATION),
        "max_length": baseline_key(test, task, _session(tiny_model_dir, max_length=200), EVALUATION),
        "system prompt": baseline_key(test, task, _session(tiny_model_dir, system_prompt="Be brief."), EVALUATION),
        "precision": baseline_key(test, task, dataclasses.replace(
            session, plan=dataclasses.replace(session.plan, bf16=True)), EVALUATION),
        "model content": baseline_key(test, task, _session(copied_model), EVALUATION),
    }
    assert config.read_text() != (tiny_model_dir / "config.json").read_text()
    assert all(value != key for value in changed.values()), [name for name, value in changed.items() if value == key]
    assert len(set(changed.values())) == len(changed)
    # The budget keys as resolved: an explicit budget equal to the derived one predicts the same.
    derived = evaluation.max_new_tokens(task, {}, session.formatter)
    assert changed["derived budget"] == baseline_key(test, task, session, {**EVALUATION, "max_new_tokens": derived})


def test_model_files_are_hashed_once_until_they_change(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    (folder / ".conversion-complete").write_text("/a/path/on/this/machine")
    reads = []
    original = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda path: reads.append(path.name) or original(path))
    first = models.folder_sha256(folder, tmp_path / "cache")
    assert sorted(reads) == ["config.json", "model.safetensors"]  # the machine-specific marker is left out
    assert models.folder_sha256(folder, tmp_path / "cache") == first and len(reads) == 2
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert models.folder_sha256(folder, tmp_path / "cache") != first and reads[-1] == "model.safetensors"
    assert len(reads) == 3


def _finished_run(test, model, evaluation_params, status="FINISHED"):
    """One run as mini_test100 logs it: the baseline node, its predictions artifact, the record's params."""
    with mlflow.start_run() as run:
        predictions, provenance = nodes.predict_baseline(test, model, {}, "fp32", evaluation_params, DATA)
        path = run_tracking.BASELINE_ARTIFACT.split("/")[-1]
        predictions.to_json(path, orient="records", lines=True, double_precision=15)  # as the catalog writes it
        mlflow.log_artifact(path, "predictions")
        run_tracking.log_params(run.info.run_id, provenance)
        if status != "FINISHED":
            mlflow.end_run(status)
    return run.info.run_id, predictions, provenance


def test_a_later_run_reuses_the_baseline_and_a_changed_setting_misses(tracking, tiny_model_dir, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tracking)
    mlflow.set_experiment(run_tracking.EXPERIMENT_NAME)  # in this test's store, whatever ran before
    model, test = {"name": str(tiny_model_dir), "max_length": 256}, _test_set()
    first_id, first, provenance = _finished_run(test, model, EVALUATION)
    assert provenance[run_tracking.BASELINE_REUSED] == "false" and provenance[run_tracking.BASELINE_SOURCE] == first_id

    computed = []
    original_predict = evaluation.predict
    monkeypatch.setattr(evaluation, "predict", lambda *args, **kwargs: computed.append(1) or original_predict(
        *args, **kwargs))
    _second_id, second, provenance = _finished_run(test, model, EVALUATION)
    assert not computed and provenance == {run_tracking.BASELINE_KEY: provenance[run_tracking.BASELINE_KEY],
                                           run_tracking.BASELINE_REUSED: "true",
                                           run_tracking.BASELINE_SOURCE: first_id}
    # Every baseline metric is still reported, with the values a computed baseline gives.
    task = build_task(DATA)
    reused, computed_metrics = metrics_of(second, task), metrics_of(first, task)
    assert set(reused) == set(computed_metrics)
    for name, value in computed_metrics.items():
        assert reused[name] == (pytest.approx(value, nan_ok=True) if isinstance(value, float) else value), name
    assert {"accuracy", "auc", "gen_accuracy", "parse_failure_rate", "predicted_share_fake"} <= set(
        metrics_of(second, task))
    # A run that reused names the run that computed the baseline, not itself.
    _third_id, _, provenance = _finished_run(test, model, EVALUATION)
    assert not computed and provenance[run_tracking.BASELINE_SOURCE] == first_id

    _finished_run(test, model, {**EVALUATION, "label_scoring": "mean"})
    assert len(computed) == 1  # another scoring rule: computed again
    edited = test.copy()
    edited.loc[0, "input"] += " (edited)"
    _finished_run(edited, model, EVALUATION)
    assert len(computed) == 2  # another test set: computed again
    _finished_run(test, model, {**EVALUATION, "reuse_baseline": False})
    assert len(computed) == 3  # reuse turned off
    failed_key_settings = {**EVALUATION, "max_new_tokens": 2}
    _finished_run(test, model, failed_key_settings, status="FAILED")
    _finished_run(test, model, failed_key_settings)
    assert len(computed) == 5  # a FAILED run is never a source


def test_without_an_mlflow_run_the_baseline_is_computed(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(run_tracking, "finished_baseline_run", lambda key: pytest.fail("looked up without a run"))
    predictions, provenance = nodes.predict_baseline(_test_set(), {"name": str(tiny_model_dir), "max_length": 256},
                                                     {}, "fp32", EVALUATION, DATA)
    assert provenance[run_tracking.BASELINE_REUSED] == "false" and len(predictions) == 6


def test_run_record_carries_the_baseline_provenance():
    training_summary = {"loss_history": [], "train_runtime_s": 1.0, "peak_memory_mb": 1.0, "precision": "fp32",
                        "model_source": "local", "device": "cpu", "adapter_sha256": {"adapter_model.safetensors": "a"}}
    split = {"source": "s", "test_source": "t", "train_size": 4, "test_size": 2, "train_sha256": "a",
             "test_sha256": "b"}
    metrics = {"baseline": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.75}}
    provenance = {run_tracking.BASELINE_KEY: "k", run_tracking.BASELINE_REUSED: "true",
                  run_tracking.BASELINE_SOURCE: "run-1"}
    record = nodes.build_run_record(split, training_summary, metrics, {"name": "m"}, {}, DATA, provenance)
    assert {key: record.params[key] for key in provenance} == provenance
    assert record.metrics["baseline_accuracy"] == 0.5


def test_a_sweep_reuses_an_earlier_baseline_and_loads_the_base_model_once(tracking, tiny_model_dir,  # noqa: F811
                                                                          monkeypatch):
    loads = []

    def counted(*args, **kwargs):
        loads.append(args[0])
        return load_causal_lm(*args, **kwargs)

    monkeypatch.setattr(model_session, "load_causal_lm", counted)
    first = _sweep(tracking, tiny_model_dir)
    # Baseline, two trainings, their evaluations and validations: one load from disk in this process.
    assert first.status["ran"] == 2 and len(loads) == 1
    runs = {row.run_id: mlflow.get_run(row.run_id) for row in first.results.itertuples()}
    assert {run.data.params[run_tracking.BASELINE_REUSED] for run in runs.values()} == {"false"}
    assert all(run.data.params[run_tracking.BASELINE_SOURCE] == run_id for run_id, run in runs.items())

    computed = []
    original_predict = evaluation.predict
    monkeypatch.setattr(evaluation, "predict", lambda *args, **kwargs: computed.append(1)
                        or original_predict(*args, **kwargs))
    other = _sweep(tracking, tiny_model_dir, learning_rates=[1e-2])  # new configurations, same baseline
    assert other.status["ran"] == 2 and not computed  # the baseline was not computed again
    params = [mlflow.get_run(run_id).data.params for run_id in other.results["run_id"]]
    assert {p[run_tracking.BASELINE_REUSED] for p in params} == {"true"}
    assert {p[run_tracking.BASELINE_SOURCE] for p in params} <= set(runs)
    assert other.results["baseline_primary"].tolist() == pytest.approx(first.results["baseline_primary"].tolist())
    assert not model_session._KEPT_BASE_MODELS  # released when the sweep ends


def test_a_kept_base_model_is_copied_so_no_load_sees_another_loads_changes(tiny_model_dir, monkeypatch):
    """Training adds LoRA layers to its model and evaluation merges an adapter into it: each load of a kept
    base model is a fresh copy, read from disk once."""
    import torch

    loads = []
    monkeypatch.setattr(model_session, "load_causal_lm",
                        lambda *args, **kwargs: loads.append(args[0]) or load_causal_lm(*args, **kwargs))
    session = _session(tiny_model_dir)
    fresh = load_causal_lm(str(tiny_model_dir), session.plan)
    model_session.keep_base_models()
    try:
        first = session.load_model()
        with torch.no_grad():
            next(first.parameters()).add_(1.0)  # what a merged adapter does to the base weights
        second = session.with_purpose("train").load_model()
        assert second is not first and len(loads) == 1
        for kept, disk in zip(second.parameters(), fresh.parameters(), strict=True):
            assert torch.equal(kept, disk)
    finally:
        model_session.keep_base_models(False)
    assert not model_session._KEPT_BASE_MODELS
    session.load_model()
    assert len(loads) == 2  # without keeping, every load reads the files again
