"""The runs archive: its schema refuses what it cannot type, archive_runs appends each finished fine-tune once
(never a FAILED, KILLED, running or forecast-only run, never an overwrite), and the predictor reads it."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor import tracking
from finetune_predictor.datasets import RunsArchiveDataset
from finetune_predictor.pipelines.archive_runs import create_pipeline
from finetune_predictor.tracking import archive

SPLIT = {"source": "bundled-synthetic-news", "test_source": "held-out", "test_sha256": "t" * 64, "train_size": 16,
         "test_size": 100, "train_sha256": "s" * 64, "family": "bundled-synthetic-news-standard"}


def _summary(tmp_path) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return {"precision": "bf16", "model_source": "local", "model_path": str(model), "device": "cpu",
            "loss_history": [{"loss": 1.0, "step": 1, "grad_norm": 1.0}], "train_runtime_s": 12.5,
            "peak_memory_mb": 900.0, "adapter_sha256": {"adapter_model.safetensors": "a" * 64}}


def _log_finetune(tmp_path, experiment_id: str, seed: int = 42, key: str | None = "k42", accuracy: float = 0.7,
                  status: str = "FINISHED", tags: dict | None = None, params: dict | None = None) -> str:
    """One fine-tune as a sweep logs it: the run record's params and metrics, its configuration key as a tag."""
    metrics = {"baseline": {"accuracy": 0.5, "primary": 0.5, "f1_fake": 0.4},
               "finetuned": {"accuracy": accuracy, "primary": accuracy, "f1_fake": 0.6}}
    record = tracking.build_run_record(SPLIT, _summary(tmp_path), metrics, {"name": "SmolLM2-135M-Instruct"},
                                       {"seed": seed}, {})
    with mlflow.start_run(experiment_id=experiment_id, run_name=record.name,
                          tags={**({tracking.CONFIG_KEY_TAG: key} if key else {}), **(tags or {})}) as run:
        mlflow.log_params({**record.params, **(params or {})})
        mlflow.log_metrics({"finetuned_primary": accuracy, "baseline_primary": 0.5, "finetuned_f1_fake": 0.6,
                            "train_runtime_s": 12.5, "mf_size": 16.0})
    if status == "RUNNING":
        mlflow.tracking.MlflowClient().update_run(run.info.run_id, status="RUNNING")
    elif status != "FINISHED":
        mlflow.tracking.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def _run_pipeline(archive_path) -> tuple[pd.DataFrame, dict]:
    pipeline = create_pipeline()
    catalog = DataCatalog({
        "params:archive_runs": MemoryDataset({"experiment_name": tracking.EXPERIMENT_NAME}),
        "archive_runs.raw.runs_archive": RunsArchiveDataset(str(archive_path)),
        "archive_runs.raw.runs_archive_appended": RunsArchiveDataset(str(archive_path)),
        "archive_runs.reporting.archive_report": MemoryDataset(copy_mode="assign")})
    SequentialRunner().run(pipeline, catalog)
    return archive.load(archive_path), catalog.load("archive_runs.reporting.archive_report")


def test_archive_runs_appends_each_finished_fine_tune_once_and_refuses_the_rest(tmp_path, store):
    finished = _log_finetune(tmp_path, store, seed=42, key="k42")
    twin = _log_finetune(tmp_path, store, seed=43, key="k43", accuracy=0.65)
    failed = _log_finetune(tmp_path, store, seed=44, key="k44", status="FAILED")
    killed = _log_finetune(tmp_path, store, seed=45, key="k45", status="KILLED")
    forecast = _log_finetune(tmp_path, store, seed=46, key=None, tags={tracking.SKIPPED_BY_FORECAST_TAG: "1"})
    with mlflow.start_run(experiment_id=store, run_name="sensitivity"):  # a sweep's parent: not a fine-tune
        pass
    path = tmp_path / "runs_archive" / "runs.csv"

    rows, report = _run_pipeline(path)
    assert set(rows["run_id"]) == {finished, twin}
    assert (report["added"], report["already"], report["refused"], report["other_runs"]) == (2, 0, 3, 1)
    assert {item["run_id"] for item in report["refused_runs"]} == {failed, killed, forecast}
    row = rows.set_index("run_id").loc[finished]
    assert row["finetuned_primary"] == 0.7 and row["task"] == "binary_classification"
    assert row["dataset_family"] == "bundled-synthetic-news-standard" and row["seed"] == 42
    assert row["precision"] == "bf16" and row["git_sha"] not in ("", None) and row["cpu_isa"]
    assert row["model_sha256"] != "unknown" and row["wall_time_s"] >= 0
    assert rows.set_index("run_id").loc[twin, "replicate_key"] == row["replicate_key"]  # seed twins share it
    assert "finetuned_f1_fake" not in rows  # a per-label metric means nothing across tasks
    assert (path.parent / "schema.json").is_file()

    again, second = _run_pipeline(path)
    assert (second["added"], second["already"]) == (0, 2)
    pd.testing.assert_frame_equal(again, rows)


def test_an_archived_row_is_never_overwritten_by_a_different_one(tmp_path, store):
    _log_finetune(tmp_path, store)
    path = tmp_path / "runs.csv"
    rows, _ = _run_pipeline(path)
    rows.loc[0, "finetuned_primary"] = 0.9  # the archive says otherwise than the store
    RunsArchiveDataset(str(path)).save(rows)
    kept, report = _run_pipeline(path)
    assert report["added"] == 0 and report["refused"] == 1
    assert "never overwritten" in report["refused_runs"][0]["reason"]
    assert kept.loc[0, "finetuned_primary"] == 0.9


def test_a_second_run_of_an_archived_configuration_key_is_refused(tmp_path):
    row = {column.name: "x" for column in archive.COLUMNS} | {
        "run_id": "a", "config_key": "k", "wall_time_s": 1.0, "seed": 1, "train_size": 2, "test_size": 2,
        "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1, "num_train_epochs": 3,
        "max_steps": -1, "effective_batch_size": 8, "max_length": 512, "label_noise": 0.0, "duplicate_rate": 0.0,
        "positive_share": 0.5, "records_truncated": 0, "finetuned_primary": 0.5, "baseline_primary": 0.5,
        "classical_primary": 0.5, "validation_primary": 0.5, "train_runtime_s": 1.0, "train_peak_memory_mb": 1.0}
    first, _ = archive.append(pd.DataFrame(), pd.DataFrame([row]))
    _, report = archive.append(first, pd.DataFrame([{**row, "run_id": "b"}]))
    assert report["added"] == 0 and "ran alike as archived run a" in report["refused_runs"][0]["reason"]
    # The key is made from the requested settings: another machine's fp32 run of the sweep is a measurement too.
    _, other_precision = archive.append(first, pd.DataFrame([{**row, "run_id": "b", "precision": "fp32"}]))
    assert other_precision["added"] == 1
    _, missing = archive.append(first, pd.DataFrame([{**row, "run_id": "c", "config_key": "k2", "git_sha": None}]))
    assert "git_sha" in missing["refused_runs"][0]["reason"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda frame: frame.drop(columns="dataset_family"), "no column 'dataset_family'"),
    (lambda frame: frame.assign(seed="forty-two"), ":2: column 'seed' holds 'forty-two', not a int"),
    (lambda frame: frame.assign(train_size=16.5), "column 'train_size' holds"),
    (lambda frame: frame.assign(mystery=1), "column 'mystery' the archive schema does not know"),
    (lambda frame: frame.assign(git_sha=None), ":2: column 'git_sha' is empty"),
])
def test_an_archive_with_a_missing_or_mistyped_column_is_one_error_naming_it(tmp_path, store, change, message):
    _log_finetune(tmp_path, store)
    path = tmp_path / "runs.csv"
    rows, _ = _run_pipeline(path)
    change(rows).to_csv(path, index=False)
    with pytest.raises(archive.ArchiveSchemaError, match=message.replace("(", r"\(")) as refused:
        archive.load(path)
    assert str(path) in refused.value.where


def test_the_archive_reads_back_under_the_runs_table_names_the_predictor_uses(tmp_path, store):
    _log_finetune(tmp_path, store)
    rows, _ = _run_pipeline(tmp_path / "runs.csv")
    table = archive.as_runs_table(rows)
    live = tracking.runs_table()
    for name in ("run_id", "task", "dataset_family", "model", "replicate_key", "finetuned_primary", "mf_size",
                 "param_learning_rate", "param_train_size", "param_test_sha256", "param_data_variant"):
        assert name in table and name in live, name
        assert str(table[name].iloc[0]) == str(live[name].iloc[0]) or float(table[name].iloc[0]) == float(
            live[name].iloc[0]), name


def test_the_predictor_learns_from_the_archive_and_the_store_runs_it_does_not_hold(tmp_path, store):
    from finetune_predictor.pipelines.predictor.nodes import load_runs_table

    _log_finetune(tmp_path, store, seed=42, key="k42")
    _log_finetune(tmp_path, store, seed=43, key="k43")
    archived, _ = _run_pipeline(tmp_path / "runs.csv")
    newer = _log_finetune(tmp_path, store, seed=44, key="k44")
    settings = {"target_column": "finetuned_primary", "experiment_name": tracking.EXPERIMENT_NAME}

    table = load_runs_table(archived, settings)
    assert len(table) == 3 and table["run_id"].is_unique
    assert table.set_index("run_id")[archive.SOURCE_COLUMN].to_dict()[newer] == "store"
    assert (table[archive.SOURCE_COLUMN] == "archive").sum() == 2
    assert len(load_runs_table(archived, {**settings, "experiment_name": None})) == 2  # the archive alone

    mine = tmp_path / "mine.csv"
    archived.assign(lora_r="eight").to_csv(mine, index=False)
    with pytest.raises(archive.ArchiveSchemaError, match="column 'lora_r' holds 'eight'"):
        load_runs_table(archived.iloc[:0], {**settings, "table_path": str(mine)})


def test_a_running_run_is_refused_then_archived_once_it_finishes(tmp_path, store):
    running = _log_finetune(tmp_path, store, status="RUNNING")
    path = tmp_path / "runs.csv"
    rows, report = _run_pipeline(path)
    assert rows.empty and "RUNNING" in report["refused_runs"][0]["reason"]
    mlflow.tracking.MlflowClient().set_terminated(running, "FINISHED")
    rows, report = _run_pipeline(path)
    assert report["added"] == 1 and list(rows["run_id"]) == [running]


def test_meta_features_logged_after_a_run_was_archived_fill_its_row(tmp_path, store):
    run_id = _log_finetune(tmp_path, store)
    path = tmp_path / "runs.csv"
    before, _ = _run_pipeline(path)
    assert "mf_initial_loss" not in before
    mlflow.tracking.MlflowClient().log_metric(run_id, "mf_initial_loss", 2.5)  # a sweep's feature backfill
    after, report = _run_pipeline(path)
    assert (report["added"], report["filled"], report["refused"]) == (0, 1, 0)
    assert after.loc[0, "mf_initial_loss"] == 2.5 and after.loc[0, "finetuned_primary"] == 0.7


def test_one_mistyped_store_run_is_refused_by_name_and_the_others_are_archived(tmp_path, store):
    good = _log_finetune(tmp_path, store, seed=42, key="k42")
    bad = _log_finetune(tmp_path, store, seed=43, key="k43", params={"train_per_class": "lots"})
    rows, report = _run_pipeline(tmp_path / "runs.csv")
    assert list(rows["run_id"]) == [good]
    assert report["refused_runs"] == [{"run_id": bad, "reason": report["refused_runs"][0]["reason"]}]
    assert "'train_per_class' holds 'lots'" in report["refused_runs"][0]["reason"]


def test_archive_runs_on_a_store_without_the_experiment_says_so(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(Exception, match="has no experiment 'finetune_predictor'"):
            _run_pipeline(tmp_path / "runs.csv")
    finally:
        mlflow.set_tracking_uri("")


def test_a_store_run_that_measured_an_archived_one_enters_the_predictor_once(tmp_path, store):
    archived_run = _log_finetune(tmp_path, store, seed=42, key="k42")
    archived, _ = _run_pipeline(tmp_path / "runs.csv")
    again = _log_finetune(tmp_path, store, seed=42, key="k42")  # the same configuration, key and machine
    merged, laid = archive.with_store(archived, archive.store_rows(tracking.EXPERIMENT_NAME)[0])
    assert list(merged["run_id"]) == [archived_run]
    assert laid["refused_runs"][0]["run_id"] == again
    assert merged[archive.SOURCE_COLUMN].tolist() == ["archive"]
    assert merged["learning_rate"].map(type).eq(float).all()  # typed like the archive, never strings


def test_two_mini_test100_runs_without_a_configuration_key_are_both_archived(tmp_path, store):
    first = _log_finetune(tmp_path, store, seed=42, key=None)
    second = _log_finetune(tmp_path, store, seed=43, key=None)
    rows, report = _run_pipeline(tmp_path / "runs.csv")
    assert set(rows["run_id"]) == {first, second}
    assert report["refused_runs"] == []  # neither is "a later run of its key": they have none
