"""A run reads back the versions it saved, even when another run saved a newer one in between."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.io.core import Version
from kedro.pipeline import Pipeline, node
from kedro_datasets.pandas import CSVDataset

from finetune_predictor.hooks import (
    PREFLIGHT_GATE,
    SPLIT_SUMMARY,
    ReadOwnWritesHooks,
    RunSummaryHooks,
    SettingsCheckHooks,
)
from finetune_predictor.settings_schema import SettingsError


def _summary(path, save_version: str) -> CSVDataset:
    return CSVDataset(filepath=str(path), version=Version(None, save_version))


def test_a_run_loads_its_own_version_not_a_concurrent_newer_one(tmp_path):
    path = tmp_path / "experiment_summary.csv"
    ours, theirs = _summary(path, "2026-01-01T00.00.00.001Z"), _summary(path, "2026-01-01T00.00.00.002Z")
    hooks = ReadOwnWritesHooks()
    hooks.after_catalog_created(DataCatalog({"sensitivity.reporting.experiment_summary": ours}))

    ours.save(pd.DataFrame({"dataset": ["bundled"]}))
    hooks.after_dataset_saved("sensitivity.reporting.experiment_summary")
    theirs.save(pd.DataFrame({"dataset": ["liar"]}))  # a second `kedro run`, started a millisecond later

    assert ours.load()["dataset"].tolist() == ["bundled"]
    # Without the hook Kedro resolves "latest": the other run's file.
    assert _summary(path, "2026-01-01T00.00.00.003Z").load()["dataset"].tolist() == ["liar"]


def test_unversioned_and_unknown_datasets_are_left_alone(tmp_path):
    plain = CSVDataset(filepath=str(tmp_path / "plain.csv"))
    hooks = ReadOwnWritesHooks()
    hooks.after_dataset_saved("anything")  # before any catalog: nothing to do
    hooks.after_catalog_created(DataCatalog({"plain": plain}))
    plain.save(pd.DataFrame({"a": [1]}))
    hooks.after_dataset_saved("plain")
    hooks.after_dataset_saved("not.in.catalog")
    assert plain.load()["a"].tolist() == [1]


def test_headline_says_the_result_first():
    from finetune_predictor.modeling.evaluation import headline

    metrics = {"baseline": {"accuracy": 0.5, "primary": 0.5, "auc": 0.514},
               "finetuned": {"accuracy": 0.8, "primary": 0.8, "auc": 0.888}, "classical": {"primary": 0.77}}
    assert headline(metrics, 780) == ("accuracy: baseline 50.0% -> fine-tuned 80.0% (+30.0 points), AUC 0.51 -> 0.89, "
                                      "classical 77.0%, 13.0 min")
    qa = {"baseline": {"f1": 0.1, "primary": 0.1}, "finetuned": {"f1": 0.45, "exact_match": 0.3, "primary": 0.45}}
    assert headline(qa).startswith("f1: baseline 10.0% -> fine-tuned 45.0% (+35.0 points)")


def _pipeline(inputs: str, output: str) -> Pipeline:
    return Pipeline([node(lambda value: value, inputs, output, name="step")])


def test_data_engineering_ends_with_its_counts_and_what_was_removed(capsys):
    """Issue 18: data_engineering ended with a list of paths; now with train/test counts and what was removed."""
    summary = {"source": "claims.jsonl", "records_available": 600, "train_size": 2, "test_size": 2,
               "train_label_counts": {"fake": 1, "legitimate": 1}, "test_label_counts": {"fake": 1, "legitimate": 1},
               "duplicates": {"pool": {"duplicates_removed": 596}}, "train_test_overlap_removed": 0,
               "read": {"train_file": {"records_rejected": 2, "rejected_by_reason": {"unknown label 'x'": 2}}}}
    catalog = DataCatalog({SPLIT_SUMMARY: MemoryDataset(summary)})
    RunSummaryHooks().after_pipeline_run({}, {}, _pipeline("params:data", SPLIT_SUMMARY), catalog)
    assert ("finetune-predictor: data: train 2 (fake 1, legitimate 1), test 2 (fake 1, legitimate 1) from 600 records "
            "of claims.jsonl; removed: 596 duplicate(s), 2 quarantined") in capsys.readouterr().out


def test_a_pipeline_without_preflight_refuses_a_wrong_setting_of_the_groups_it_reads():
    parameters = {"data": {"train_per_class": "abc"}, "evaluation": {"engine": "foo"}}
    catalog = DataCatalog({"parameters": MemoryDataset(parameters)})
    with pytest.raises(SettingsError, match=r"data\.train_per_class must be an integer, got 'abc'") as info:
        SettingsCheckHooks().before_pipeline_run(_pipeline("params:data", "out"), catalog)
    assert "evaluation" not in str(info.value)  # a group this pipeline does not read is not its business
    with pytest.raises(SettingsError, match=r"evaluation\.engine"):
        SettingsCheckHooks().before_pipeline_run(_pipeline("params:evaluation.batch_size", "out"), catalog)
    # The preflight checks every group itself, in its verdict table.
    SettingsCheckHooks().before_pipeline_run(_pipeline("params:data", PREFLIGHT_GATE), catalog)
    SettingsCheckHooks().before_pipeline_run(_pipeline("other", "out"), catalog)  # reads no settings


def test_sweep_and_predictor_end_with_their_headline():
    import pandas as pd

    from finetune_predictor.hooks import predictor_headline, sweep_headline

    analysis = {"metric": "accuracy", "selected_on": "validation",
                "best": {"data_variant": "clean", "train_size": 128, "learning_rate": 1e-3, "lora_r": 8,
                         "mean_primary": 0.8125},
                "curves": [{"data_variant": "clean", "knee_size": 64}, {"data_variant": "noisy", "knee_size": 32}]}
    assert sweep_headline(analysis) == ("sweep best: clean n=128 lr=0.001 r=8 -> test accuracy 81.2% "
                                        "(selected on validation), knee at 64 examples")
    assert sweep_headline({"best": None}) == "sweep: no finished run yet"
    evaluation = pd.DataFrame({"model": ["selected", "baseline_mean", "selected", "baseline_mean", "ridge"],
                               "split": ["random", "random", "grouped_task", "grouped_task", "random"],
                               "rmse": [2.0, 5.0, 9.5, 8.25, 3.0]})
    assert predictor_headline(evaluation, {"model": "ridge_cv"}) == (
        "predictor shipped: ridge_cv (grouped_task RMSE 9.5 vs mean 8.2; random RMSE 2.0 vs mean 5.0; points)")


def test_a_file_written_before_its_dataset_was_versioned_becomes_its_latest_version(tmp_path):
    """A project upgraded from before seven datasets were versioned held plain files where Kedro now expects a
    folder of versions: every run failed with NotADirectoryError. The file is adopted as the latest version."""
    from finetune_predictor.datasets import AtomicCSVDataset
    from finetune_predictor.hooks import AdoptUnversionedOutputsHooks

    path = tmp_path / "08_reporting" / "preflight_verdict.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"check": ["settings"], "ok": [True]}).to_csv(path, index=False)
    verdict = AtomicCSVDataset(filepath=str(path), version=Version(None, None))
    with pytest.raises(Exception, match=r"(?i)not a directory|any versions"):
        verdict.load()  # the failure users saw

    AdoptUnversionedOutputsHooks().after_catalog_created(DataCatalog({"preflight.reporting.verdict": verdict}))

    fresh = AtomicCSVDataset(filepath=str(path), version=Version(None, None))
    assert fresh.load()["check"].tolist() == ["settings"]  # nothing lost: the old output is the latest version
    fresh.save(pd.DataFrame({"check": ["data"], "ok": [False]}))  # and the next run saves beside it
    assert len(list(path.iterdir())) == 2


def test_a_versioned_folder_and_an_unversioned_dataset_are_not_touched(tmp_path):
    from finetune_predictor.modeling.artifacts import adopt_unversioned_file

    assert adopt_unversioned_file(tmp_path / "missing.csv") is None
    folder = tmp_path / "versions.csv"
    (folder / "2026-01-01T00.00.00.000Z").mkdir(parents=True)
    assert adopt_unversioned_file(folder) is None and folder.is_dir()


def test_a_folder_another_run_made_in_between_is_put_back_not_buried(tmp_path, monkeypatch):
    """Two runs adopting at once: the second finds a folder (the first's versions) where it saw a file; it must
    put that folder back rather than nest it under a version of its own."""
    from finetune_predictor.modeling import artifacts

    path = tmp_path / "sweep_status.json"
    (path / "2026-01-01T00.00.00.000Z").mkdir(parents=True)
    (path / "2026-01-01T00.00.00.000Z" / "sweep_status.json").write_text("{}")
    real_is_file = type(path).is_file
    # The first check saw a file (another run had not moved it yet); every later check sees the disk as it is.
    monkeypatch.setattr(type(path), "is_file", lambda self: self == path or real_is_file(self))
    assert artifacts.adopt_unversioned_file(path) is None
    assert (path / "2026-01-01T00.00.00.000Z" / "sweep_status.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep_status.json"]


def test_a_pipeline_whose_inputs_another_pipeline_makes_is_refused_before_it_starts(tmp_path):
    """predict without a trained predictor used to spend its preflight and probes, then stop on a bare
    DatasetError; now it is refused at once, naming the dataset, its file and the pipeline that makes it."""
    from kedro_datasets.json import JSONDataset

    from finetune_predictor.errors import UserFacingError
    from finetune_predictor.hooks import MissingInputsHooks

    card = JSONDataset(filepath=str(tmp_path / "card.json"), version=Version(None, None))
    catalog = DataCatalog({"predictor.model.card": card, "params:rank": MemoryDataset({})})
    registered = {"__default__": _pipeline("x", "predictor.model.card"),
                  "predictor": _pipeline("runs", "predictor.model.card")}
    ranking = Pipeline([node(lambda c, r: c, ["predictor.model.card", "params:rank"], "ranking")])
    hooks = MissingInputsHooks(registered)
    with pytest.raises(UserFacingError) as caught:
        hooks.before_pipeline_run({"pipeline_names": ["rank_datasets"]}, ranking, catalog)
    error = caught.value
    assert "rank_datasets" in error.what and "predictor.model.card" in error.where and "card.json" in error.where
    assert error.fix == "run `kedro run --pipeline=predictor` first"
    with pytest.raises(UserFacingError) as caught:  # the study's environment goes into the command to run first
        hooks.before_pipeline_run({"pipeline_names": ["rank_datasets"], "env": "liar"}, ranking, catalog)
    assert caught.value.fix == "run `kedro run --pipeline=predictor --env=liar` first"
    card.save({"model": "baseline_mean"})
    hooks.before_pipeline_run({"pipeline_names": ["rank_datasets"]}, ranking, catalog)  # now it exists: runs
    # An in-memory input another node of a fuller run makes (--from-nodes) is left to Kedro's own message.
    memory = Pipeline([node(lambda c: c, "preflight.int.passed", "x")])
    hooks.before_pipeline_run({}, memory, DataCatalog({"preflight.int.passed": MemoryDataset()}))


def test_an_optional_view_loads_none_until_its_dataset_is_saved_then_the_latest_version(tmp_path):
    """rank_datasets reads the predictor's card through an optional view: None before any predictor (so the
    prior ranks, instead of a refusal), the newest saved version after; the missing-inputs check never refuses it."""
    import yaml

    from finetune_predictor.datasets import AtomicJSONDataset
    from finetune_predictor.hooks import MissingInputsHooks
    from tests.conftest import PROJECT_ROOT

    entry = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())["predictor.model.card_if_saved"]
    entry["dataset"]["filepath"] = str(tmp_path / "card.json")
    catalog = DataCatalog.from_config({"predictor.model.card_if_saved": entry})
    assert catalog.load("predictor.model.card_if_saved") is None
    ranking = Pipeline([node(lambda c: c, "predictor.model.card_if_saved", "ranking")])
    MissingInputsHooks({}).before_pipeline_run({"pipeline_names": ["rank_datasets"]}, ranking, catalog)
    for version, model in (("2026-01-01T00.00.00.000Z", "old"), ("2026-02-01T00.00.00.000Z", "new")):
        AtomicJSONDataset(filepath=str(tmp_path / "card.json"), version=Version(None, version)).save({"model": model})
    again = DataCatalog.from_config({"predictor.model.card_if_saved": entry})
    assert again.load("predictor.model.card_if_saved") == {"model": "new"}
    with pytest.raises(Exception, match="read-only"):
        again.save("predictor.model.card_if_saved", {"model": "x"})


def test_the_next_steps_point_the_mlflow_ui_at_the_store_the_run_wrote_to(tmp_path, capsys, monkeypatch):
    """With MLFLOW_TRACKING_URI naming another store, the printed `mlflow ui` command used to open the project's
    mlflow.db, where the run is not."""
    import mlflow
    from kedro_datasets.text import TextDataset

    report = tmp_path / "report.md"
    report.write_text("x")
    catalog = DataCatalog({"x.reporting.report": TextDataset(filepath=str(report), metadata={"summary": "report"})})
    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: store)
    RunSummaryHooks().after_pipeline_run({}, {}, Pipeline([node(lambda: "x", None, "x.reporting.report")]), catalog)
    out = capsys.readouterr().out
    assert f"--backend-store-uri {store} " in out and "sqlite:///mlflow.db" not in out
