"""Sensitivity sweeps: grid, data variants, resume after failure or kill, Ray, and the report's numbers."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.data import task_data
from finetune_predictor.data.records import CANONICAL_COLUMNS
from finetune_predictor.pipelines.sensitivity import configuration_run, create_pipeline, planning, runner
from finetune_predictor.pipelines.sensitivity.grid import DataVariant, apply_variant, expand_grid
from finetune_predictor.pipelines.sensitivity.report import analyse, gain_per_doubling, knee_point, markdown_report
from finetune_predictor.tasks import BinaryClassificationTask
from finetune_predictor.tracking import CONFIG_KEY_TAG, build_run_record, runs_table

LABELS = ["fake", "legitimate"]
BINARY = BinaryClassificationTask("fake", "legitimate")
DATA = {"task": "binary_classification", "path": None, "test_path": None, "label_positive": "fake",
        "label_negative": "legitimate", "train_per_class": 100, "test_per_class": 3, "seed": 5,
        "synthetic": {"num_records": 120, "seed": 7}}


def test_grid_is_every_combination_smallest_first():
    configs = expand_grid({"train_per_class": [50, 10], "learning_rates": [1e-4, 1e-3], "seeds": [1, 2],
                           "data_variants": [{"name": "clean"}, {"name": "noisy", "label_noise": 0.2}]}, "m")
    assert len(configs) == 2 * 2 * 2 * 2
    assert [c.train_per_class for c in configs[:4]] == [10, 10, 10, 10]
    assert len({c.key("data") for c in configs}) == 16
    assert configs[0].key("data") != configs[0].key("other data")  # new data, new runs
    with pytest.raises(ValueError, match=r"Unknown sensitivity setting\(s\) \['learning_rate'\]"):
        expand_grid({"train_per_class": [1], "learning_rate": [1e-3]}, "m")
    with pytest.raises(ValueError, match=r"label_noise must be in \[0, 0.5\]"):
        DataVariant(name="x", label_noise=0.7)
    with pytest.raises(ValueError, match=r"sensitivity\.lora\[0\] sets \['target_modules'\]"):
        expand_grid({"train_per_class": [1], "learning_rates": [1e-3], "lora": [{"r": 4, "target_modules": ["q"]}]},
                     "m")


def _frame(n: int, label: str, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{label}{i}" for i in range(start, start + n)], "instruction": "Q",
                         "input": [f"text {label} {i}" for i in range(start, start + n)], "output": label,
                         "source": "s", "group": "g", "references": ""})[CANONICAL_COLUMNS]


def test_data_variants_are_exact_and_deterministic():
    train = pd.concat([_frame(10, "fake"), _frame(10, "legitimate")], ignore_index=True)
    noisy = apply_variant(train, DataVariant("n", label_noise=0.2), BINARY, seed=3)
    assert (noisy["output"] != train["output"]).sum() == 4
    assert noisy.equals(apply_variant(train, DataVariant("n", label_noise=0.2), BINARY, seed=3))
    duplicated = apply_variant(train, DataVariant("d", duplicate_rate=0.5), BINARY, seed=3)
    assert len(duplicated) == 20 and duplicated["input"].duplicated().sum() >= 1
    assert duplicated["id"].is_unique
    pool = pd.concat([_frame(30, "fake"), _frame(30, "legitimate")], ignore_index=True)
    skewed = apply_variant(train, DataVariant("s", positive_share=0.8), BINARY, seed=3, pool=pool)
    assert skewed["output"].value_counts().to_dict() == {"fake": 16, "legitimate": 4}


def test_knee_and_gain_per_doubling_by_hand():
    sizes, accuracy = [50, 100, 200, 400], [0.60, 0.75, 0.80, 0.82]
    # normalised log2 sizes 0, 1/3, 2/3, 1; normalised accuracy 0, .682, .909, 1: largest lift at 100
    assert knee_point(sizes, accuracy) == 100
    slope = np.polyfit([np.log2(s) for s in sizes], accuracy, 1)[0]
    assert gain_per_doubling(sizes, accuracy) == pytest.approx(slope)
    assert knee_point([50, 100], [0.6, 0.7]) is None  # two sizes make no knee
    assert knee_point([1, 2, 4], [0.5, 0.6, 0.9]) is None  # convex: no knee yet


def _sweep_data(sizes, data=None) -> runner.SweepData:
    data = {**DATA, "test_per_class": 3, **(data or {})}
    records, _rejects, read_summary = task_data.load_task_records(data)
    return runner.SweepData(*task_data.nested_subsets(records, read_summary, data, sizes, validation_per_class=2))


def test_prepared_test_set_is_fixed_and_subsets_nested():
    sweep_data = _sweep_data([2, 5])
    small, large = task_data.subset(sweep_data.subsets, 2), task_data.subset(sweep_data.subsets, 5)
    assert set(small["id"]) <= set(large["id"])
    assert not set(sweep_data.test["id"]) & set(large["id"])
    assert not set(sweep_data.test["id"]) & set(sweep_data.pool["id"])
    # The validation set is disjoint from the test set and from every training subset and the pool.
    assert len(sweep_data.validation) == 4
    assert not set(sweep_data.validation["id"]) & (set(sweep_data.test["id"]) | set(large["id"])
                                                   | set(sweep_data.pool["id"]))
    summary = sweep_data.split_summary
    assert len(sweep_data.test) == 6 and summary["test_sha256"] and set(summary["subset_sha256"]) == {"2", "5"}
    # Adding a size leaves the other sizes' data fingerprints (and so their resume keys) as they were.
    config = expand_grid({"train_per_class": [2], "learning_rates": [1e-3]}, "m")[0]
    assert _sweep_data([2, 5, 9]).fingerprint(config) == sweep_data.fingerprint(config)


def test_variant_pool_holds_only_training_origin_records(tmp_path):
    """With data.test_path set, test-file records that the test sample did not draw must never become
    training candidates of a class-share variant (they did when the pool was 'records minus test ids')."""
    rows = [{"instruction": "Q", "input": f"train text {label} {i}", "output": label}
            for i in range(20) for label in ("fake", "legitimate")]
    test_rows = [{"instruction": "Q", "input": f"test text {label} {i}", "output": label}
                 for i in range(20) for label in ("fake", "legitimate")]
    for name, items in (("train.jsonl", rows), ("test.jsonl", test_rows)):
        (tmp_path / name).write_text("\n".join(pd.Series(items).map(lambda r: __import__("json").dumps(r))))
    sweep_data = _sweep_data([4], {"path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl")})
    assert len(sweep_data.test) == 6
    assert not sweep_data.pool["input"].str.startswith("test text").any()


@pytest.fixture()
def tracking(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    mlflow.set_tracking_uri("")


TRAINING = {"per_device_train_batch_size": 4, "precision": "fp32", "warmup_ratio": 0.0}


def _settings(tmp_path, model_dir, training=None, **overrides):
    sensitivity = {"executor": "sequential", "gpus_per_run": 0, "train_per_class": [2, 4], "learning_rates": [5e-2],
                   "lora": [{"r": 2, "alpha": 4, "dropout": 0.0}], "num_train_epochs": [1], "seeds": [1],
                   "test_per_class": 3, "output_dir": str(tmp_path / "sweeps"), **overrides}
    model = {"name": str(model_dir), "max_length": 256}
    evaluation = {"batch_size": 8, "generation": False, "engine": "hf"}
    return sensitivity, model, training or TRAINING, evaluation


def _sweep(tmp_path, model_dir, training=None, **overrides):
    sensitivity, model, training, evaluation = _settings(tmp_path, model_dir, training, **overrides)
    sweep_data = _sweep_data(sensitivity["train_per_class"])
    return runner.run_sweep(sensitivity, sweep_data, DATA, model, {}, training, evaluation, sweep_name="test")


def _keys(tmp_path, model_dir, training=None, **overrides) -> dict:
    sensitivity, model, training, evaluation = _settings(tmp_path, model_dir, training, **overrides)
    sweep_data = _sweep_data(sensitivity["train_per_class"])
    context = runner.sweep_context(sensitivity, sweep_data, DATA, model, {}, training, evaluation, "test")
    return runner.plan(sensitivity, sweep_data, context)


def test_resume_key_covers_every_setting_that_can_change_a_result(tracking, tiny_model_dir):
    """Changing batch size, max_steps, precision, max_length or evaluation settings used to reuse old runs."""
    base = list(_keys(tracking, tiny_model_dir).values())
    assert base == list(_keys(tracking, tiny_model_dir).values())
    # The default model's name is not a setting of a sweep that lists its models.
    settings = planning.settings_fingerprint({"name": "a", "max_length": 9}, {}, {}, {})
    assert settings == planning.settings_fingerprint({"name": "b", "max_length": 9}, {}, {}, {})
    for training in ({**TRAINING, "per_device_train_batch_size": 2}, {**TRAINING, "max_steps": 3},
                     {**TRAINING, "lora": {"target_modules": ["q_proj"]}}):
        assert set(_keys(tracking, tiny_model_dir, training).values()).isdisjoint(base), training
    # The held-out loss curve's settings change no result: finished sweeps are not re-keyed by them.
    assert list(_keys(tracking, tiny_model_dir, {**TRAINING, "eval_steps": 5, "eval_max_records": 9}).values()) == base


def _runs(status: str | None = None) -> list:
    experiment = mlflow.get_experiment_by_name("finetune_predictor")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    return [run for run in runs if status is None or run.info.status == status]


def test_sweep_runs_resumes_and_recovers(tracking, tiny_model_dir, monkeypatch):
    first = _sweep(tracking, tiny_model_dir)
    assert first.status["ran"] == 2 and first.status["failed"] == 0
    assert sorted(first.results["train_size"]) == [4, 8]
    assert {"finetuned_primary", "baseline_primary", "train_time_s", "inference_time_s", "peak_memory_mb",
            "artifact_uri", "classical_accuracy", "validation_primary"} <= set(first.results.columns)
    assert first.results["validation_primary"].notna().all()
    run = _runs("FINISHED")[0]
    assert run.data.params["data_variant"] == "clean" and "train_loss" in run.data.metrics
    # The runs table tells configurations apart by tag columns; each run holds its three data sets as inputs
    # and its held-out loss curve on the validation set (never on the test set it reports).
    assert {key: run.data.tags[key] for key in ("n", "lr", "r", "seed", "variant")} == {
        "n": run.data.params["train_size"], "lr": "0.05", "r": "2", "seed": "1", "variant": "clean"}
    contexts = {tag.value for d in run.inputs.dataset_inputs for tag in d.tags}
    assert contexts == {"training", "test", "validation"}
    client = mlflow.tracking.MlflowClient()
    last_step = max(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "validation_loss")] == [last_step]
    assert "test_loss" not in run.data.metrics
    # The predictor reads the runs back with the record's own replicate key and family.
    table = runs_table()
    assert len(table) == 2 and table["replicate_key"].nunique() == 2
    assert set(table["dataset_family"]) == {"bundled-synthetic-news-standard"}

    # Re-running the same sweep redoes nothing.
    again = _sweep(tracking, tiny_model_dir)
    assert again.status["ran"] == 0 and again.status["reused"] == 2
    assert again.results["run_id"].tolist() == first.results["run_id"].tolist()

    # A sweep killed mid-run leaves a RUNNING run: the next start marks it FAILED and runs it again.
    bigger_key = next(key for config, key in _keys(tracking, tiny_model_dir, train_per_class=[2, 4, 6]).items()
                      if config.train_per_class == 6)
    experiment = mlflow.get_experiment_by_name("finetune_predictor")
    client = mlflow.tracking.MlflowClient()
    killed_parent = client.create_run(experiment.experiment_id, tags={"mlflow.runName": "killed sweep"})
    client.create_run(experiment.experiment_id, tags={CONFIG_KEY_TAG: bigger_key,
                                                      "mlflow.parentRunId": killed_parent.info.run_id})
    resumed = _sweep(tracking, tiny_model_dir, train_per_class=[2, 4, 6])
    assert resumed.status["interrupted_marked_failed"] == 1
    assert resumed.status["ran"] == 1 and resumed.status["reused"] == 2  # adding a size reuses the others
    assert len(_runs("FAILED")) == 2  # the interrupted child and the parent sweep run that died with it
    assert client.get_run(killed_parent.info.run_id).data.tags["run_failure"].startswith("interrupted")
    assert not _runs("RUNNING")

    # Data a configuration cannot have is refused before any run starts.
    with pytest.raises(ValueError, match="needs 80 examples of 'fake'"):
        _sweep(tracking, tiny_model_dir, data_variants=[{"name": "skewed", "positive_share": 1.0}],
               train_per_class=[40])

    # A configuration that fails while running is marked FAILED, the sweep goes on, and it never enters
    # the results.
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(configuration_run, "train_and_evaluate", broken)
    failing = _sweep(tracking, tiny_model_dir, learning_rates=[5e-2, 1e-2])
    assert failing.status["failed"] == 2 and failing.status["reused"] == 2
    assert "out of memory (simulated)" in failing.status["failures"][0]["error"]
    assert len(failing.results) == 2 and len(_runs("FAILED")) == 4
    failed = [run for run in _runs("FAILED") if run.data.tags.get(CONFIG_KEY_TAG) and "run_failure" in run.data.tags]
    assert any("out of memory (simulated)" in run.data.tags["run_failure"] for run in failed)
    # A run that dies in training keeps what it was given: settings and data were logged at its start.
    crashed = next(run for run in failed if "out of memory" in run.data.tags["run_failure"])
    assert crashed.data.params["learning_rate"] in ("0.05", "0.01") and crashed.data.params["train_size"]
    assert len(crashed.inputs.dataset_inputs) == 3 and crashed.data.tags["lr"] in ("0.05", "0.01")


def _fake_results() -> pd.DataFrame:
    rows = []
    for seed, shift in ((1, 0.0), (2, 0.02)):
        for size, accuracy in ((50, 0.6), (100, 0.75), (200, 0.8)):
            for variant, noise, delta in (("clean", 0.0, 0.0), ("noisy", 0.2, -0.1)):
                rows.append({"run_id": f"r{seed}{size}{variant}", "model": "m", "data_variant": variant,
                             "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1,
                             "num_train_epochs": 3.0, "train_size": size, "seed": seed, "label_noise": noise,
                             "duplicate_rate": 0.0, "positive_share": 0.5,
                             "finetuned_primary": accuracy + shift + delta,
                             "baseline_primary": 0.5, "dataset": "d", "test_sha256": "abc"})
    return pd.DataFrame(rows)


def test_analysis_traces_every_number_to_runs():
    analysis = analyse(_fake_results())
    clean = next(c for c in analysis["curves"] if c["data_variant"] == "clean")
    assert clean["knee_size"] == 100 and clean["monotone"]
    assert clean["mean_primary"] == pytest.approx([0.61, 0.76, 0.81])
    assert analysis["best"]["train_size"] == 200 and analysis["best"]["mean_primary"] == pytest.approx(0.81)
    assert analysis["best"]["run_ids"] == "r1200clean,r2200clean"
    (effect,) = analysis["variant_effects"]
    assert effect["mean_delta_primary"] == pytest.approx(-0.1) and effect["pairs"] == 6
    report = markdown_report(_fake_results(), analysis, {"ran": 12})
    assert "knee at 100 examples" in report and "-10.0 accuracy points vs clean" in report
    assert analysis["selected_on"] == "test" and "selected on test" in report


def test_best_configuration_is_selected_on_validation_never_on_test():
    """Picking the best of many configurations on the test set reports the luckiest draw; the selection
    must use the validation set and report that configuration's test figure."""
    results = _fake_results()
    results["validation_primary"] = results["finetuned_primary"]
    # On test, n=200 looks best; on validation, n=100 is better: the report follows validation.
    results.loc[results["train_size"] == 100, "validation_primary"] = 0.95
    analysis = analyse(results)
    assert analysis["selected_on"] == "validation"
    assert analysis["best"]["train_size"] == 100 and analysis["best"]["mean_primary"] == pytest.approx(0.76)
    report = markdown_report(results, analysis, {"ran": 12})
    assert "selected on the validation set (95.0% there), reported on the test set" in report


def test_sensitivity_report_nodes_run_in_kedro():
    pipeline = create_pipeline().from_nodes("sensitivity.analyse_sweep")
    results = _fake_results()
    catalog = DataCatalog({"sensitivity.reporting.experiment_summary": MemoryDataset(results),
                           "sensitivity.reporting.sweep_status": MemoryDataset({"ran": 12})})
    for name in pipeline.outputs():
        catalog[name] = MemoryDataset()
    SequentialRunner().run(pipeline, catalog)
    assert catalog.load("sensitivity.reporting.report_latex").count(r"\\") >= 3
    assert "knee at 100 examples" in catalog.load("sensitivity.reporting.report_markdown")


def test_sweep_logs_meta_features_into_each_run_and_backfills_finished_ones(tracking, tiny_model_dir):
    plain = _sweep(tracking, tiny_model_dir, train_per_class=[2])
    assert plain.status["ran"] == 1 and not any(c.startswith("mf_") for c in plain.results.columns)
    probe = {"sample_size": 4, "probe_steps": 2, "knn": 2, "cache_dir": str(tracking / "mf-cache")}
    backfilled = _sweep(tracking, tiny_model_dir, train_per_class=[2, 4], meta_features=probe)
    assert backfilled.status["reused"] == 1 and backfilled.status["features_added"] == 1
    assert backfilled.status["ran"] == 1
    for row in backfilled.results.to_dict("records"):
        assert row["mf_size"] == row["train_size"] and row["mf_probe_steps"] == 2
        assert row["mf_cost_ratio"] > 0


def test_report_nodes_survive_a_sweep_with_no_finished_run():
    """Every run failed: the report and plots say so instead of crashing and losing the sweep status."""
    pipeline = create_pipeline().from_nodes("sensitivity.analyse_sweep")
    catalog = DataCatalog({"sensitivity.reporting.experiment_summary": MemoryDataset(pd.DataFrame()),
                           "sensitivity.reporting.sweep_status": MemoryDataset({"ran": 0, "failed": 2})})
    for name in pipeline.outputs():
        catalog[name] = MemoryDataset()
    SequentialRunner().run(pipeline, catalog)
    assert "No finished runs yet" in catalog.load("sensitivity.reporting.report_markdown")


def test_a_clean_sweep_run_and_a_mini_test100_run_share_their_replicate_key():
    """Same configuration, same data: the sweep logs the clean variant's four fields, and mini_test100 must
    log the same, or seed twins of one configuration would straddle the predictor's folds."""
    split = {"source": "s", "test_source": "t", "test_sha256": "x", "train_size": 4, "test_size": 2,
             "train_sha256": "y", "family": "f"}
    summary = {"precision": "fp32", "model_source": "local", "device": "cpu", "loss_history": [],
               "train_runtime_s": 1.0, "peak_memory_mb": 1.0, "adapter_sha256": {"adapter_model.safetensors": "z"}}
    metrics = {"baseline": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.7}}
    args = (split, summary, metrics, {"name": "m"}, {"seed": 1}, {})
    mini = build_run_record(*args)
    sweep = build_run_record(*args, variant=DataVariant().as_params())
    other_seed = build_run_record(split, summary, metrics, {"name": "m"}, {"seed": 2}, {})
    assert mini.replicate_key == sweep.replicate_key == other_seed.replicate_key
    assert build_run_record(split, summary, metrics, {"name": "m"}, {"seed": 1, "max_steps": 5},
                                     {}).replicate_key != mini.replicate_key


def test_result_row_takes_the_logged_train_size_not_two_classes():
    """A six-way sweep at 30 per class trains on 180 examples and a QA sweep at 50 on 50: the row must say so
    (it used to write 2 x train_per_class for every task)."""
    from types import SimpleNamespace

    config = expand_grid({"train_per_class": [30], "learning_rates": [1e-3]}, "m")[0]
    run = SimpleNamespace(info=SimpleNamespace(run_id="r", artifact_uri="a"),
                          data=SimpleNamespace(metrics={"finetuned_accuracy": 0.3, "finetuned_primary": 0.3},
                                               params={"train_size": "180", "task": "multiclass_classification"}))
    row = runner.result_row(config, "k", run)
    assert row["train_size"] == 180 and row["task"] == "multiclass_classification"
    assert row["finetuned_primary"] == 0.3


def test_result_row_reads_an_old_run_primary_from_accuracy():
    from types import SimpleNamespace

    config = expand_grid({"train_per_class": [10], "learning_rates": [1e-3]}, "m")[0]
    run = SimpleNamespace(info=SimpleNamespace(run_id="r", artifact_uri="a"),
                          data=SimpleNamespace(metrics={"finetuned_accuracy": 0.7, "baseline_accuracy": 0.5},
                                               params={"train_size": "20"}))
    row = runner.result_row(config, "k", run)
    assert row["finetuned_primary"] == 0.7 and row["baseline_primary"] == 0.5


def test_report_names_the_task_metric():
    results = pd.DataFrame([{"model": "m", "data_variant": "clean", "learning_rate": 1e-3, "lora_r": 8,
                             "lora_alpha": 32, "lora_dropout": 0.1, "num_train_epochs": 3, "train_size": size,
                             "seed": seed, "run_id": f"{size}-{seed}", "task": "qa", "label_noise": 0.0,
                             "duplicate_rate": 0.0, "positive_share": 0.5, "finetuned_primary": 0.2 + size / 1000,
                             "baseline_primary": 0.1, "dataset": "squad", "test_sha256": "abc"}
                            for size in (25, 50, 100) for seed in (1, 2)])
    analysis = analyse(results)
    assert analysis["metric"] == "f1"
    assert "test f1 30.0%" in markdown_report(results, analysis, {"ran": 6})


def test_new_task_settings_do_not_rekey_classification_sweeps():
    """Data keys that only other tasks read (qa, schema) must not re-key a classification sweep; the budget
    keys as resolved: a classification task's null budget is derived from its labels, which generates
    differently from a fixed 8 tokens, so the two key differently."""
    before = planning.settings_fingerprint({"name": "m"}, {}, {"max_new_tokens": None},
                                           {"task": "binary_classification", "label_positive": "fake"})
    after = planning.settings_fingerprint({"name": "m"}, {}, {"max_new_tokens": None},
                                          {"task": "binary_classification", "label_positive": "fake",
                                           "qa": {"no_answer": "x"}, "schema": None, "test_split": "auto"})
    assert before == after and before["evaluation"]["max_new_tokens"] == planning.DERIVED_BUDGET
    fixed = planning.settings_fingerprint({"name": "m"}, {}, {"max_new_tokens": 8},
                                          {"task": "binary_classification", "label_positive": "fake"})
    assert fixed != before
    reuse_off = planning.settings_fingerprint({"name": "m"}, {}, {"max_new_tokens": None, "reuse_baseline": False},
                                              {"task": "binary_classification", "label_positive": "fake"})
    assert reuse_off == before  # where the baseline comes from is not a setting of the result
    qa = planning.settings_fingerprint({"name": "m"}, {}, {"max_new_tokens": None},
                                       {"task": "qa", "qa": {"no_answer": "x"}})
    assert qa["evaluation"]["max_new_tokens"] == 32 and qa["task"]["qa"] == {"no_answer": "x"}


def test_old_runs_get_their_task_indicators_from_the_task():
    from finetune_predictor.tracking import _fill_task_indicators

    table = pd.DataFrame({"task": ["binary_classification", "qa", "qa"], "mf_size": [10.0, 20.0, None],
                          "mf_task_qa": [None, 1.0, None]})
    _fill_task_indicators(table)
    assert table["mf_task_qa"].tolist()[:2] == [0.0, 1.0] and np.isnan(table["mf_task_qa"].iloc[2])
    assert table["mf_task_binary_classification"].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(table["mf_task_structured"].iloc[2])  # a run without any feature stays without


def test_every_shipped_sweep_definition_is_accepted():
    """A key added to conf/ but not to the grid's known settings stopped every sweep before it started."""
    import yaml

    from tests.conftest import PROJECT_ROOT

    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_sensitivity.yml").read_text())["sensitivity"]
    for path in sorted(PROJECT_ROOT.glob("conf/*/parameters_sensitivity.yml")):
        sensitivity = {**base, **yaml.safe_load(path.read_text())["sensitivity"]}
        assert expand_grid(sensitivity, "m"), path


def test_length_grouped_runs_are_not_seed_twins_of_random_order_runs():
    """Length-grouped batches train differently: their runs must not pool with runs without them as seed
    replicates, while runs from before the setting keep their replicate key."""
    split = {"source": "s", "test_source": "t", "test_sha256": "x", "train_size": 4, "test_size": 2,
             "train_sha256": "y", "family": "f"}
    summary = {"precision": "fp32", "model_source": "local", "device": "cpu", "loss_history": [],
               "train_runtime_s": 1.0, "peak_memory_mb": 1.0, "adapter_sha256": {"adapter_model.safetensors": "z"}}
    metrics = {"baseline": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.7}}
    grouped = build_run_record(split, summary, metrics, {"name": "m"}, {"seed": 1, "group_by_length": True}, {})
    plain = build_run_record(split, summary, metrics, {"name": "m"}, {"seed": 1, "group_by_length": False}, {})
    assert grouped.replicate_key != plain.replicate_key
    assert "group_by_length" not in plain.configuration and grouped.configuration["group_by_length"] is True


def test_a_grid_run_after_a_forecast_driven_run_states_the_regret_of_stopping(tracking, tiny_model_dir, monkeypatch):
    """The forecast-driven run skips the lr 1e-5 curve at the largest size (the stop is forced: a random model's
    curves are too noisy to stop by themselves); its skipped runs carry their config key. The grid run then trains
    only what was skipped, and states the regret of stopping and the compute saved."""
    from finetune_predictor.pipelines.sensitivity import halving

    def stop_the_small_learning_rate(results, configs, largest_size, task, level=0.9):
        return {halving.curve_of(c): {"predicted": 0.5, "lower": 0.4, "upper": 0.6, "best_lower": 0.7,
                                      "reason": "forced by the test"} for c in configs if c.learning_rate == 1e-5}

    monkeypatch.setattr(halving, "curves_to_stop", stop_the_small_learning_rate)
    settings = {"learning_rates": [5e-2, 1e-5], "train_per_class": [2, 4]}
    forecast_run = _sweep(tracking, tiny_model_dir, strategy="forecast", **settings)
    assert forecast_run.status["ran"] == 3 and len(forecast_run.status["forecast"]["skipped"]) == 1
    assert "stopping_regret" not in forecast_run.status  # what it skipped has not run
    skipped_key = next(key for config, key in _keys(tracking, tiny_model_dir, **settings).items()
                       if config.learning_rate == 1e-5 and config.train_per_class == 4)
    experiment = mlflow.get_experiment_by_name("finetune_predictor")
    forecasts = runner.tracking.forecast_skipped_runs(experiment.experiment_id, "test")
    assert [run.data.tags[runner.tracking.SKIPPED_CONFIG_KEY_TAG] for run in forecasts] == [skipped_key]
    assert CONFIG_KEY_TAG not in forecasts[0].data.tags  # never resumed from

    grid_run = _sweep(tracking, tiny_model_dir, strategy="grid", **settings)
    assert grid_run.status["ran"] == 1 and grid_run.status["reused"] == 3
    regret = grid_run.status["stopping_regret"]
    assert regret["skipped_runs"] == 1 and regret["skipped_trained_since"] == 1
    assert regret["planned_steps"] == forecast_run.status["forecast"]["planned_steps"]
    assert regret["trained_steps"] == forecast_run.status["forecast"]["trained_steps"] < regret["planned_steps"]
    assert regret["regret_points"] == 0.0 if regret["same_choice"] else regret["regret_points"] != 0.0
    text = markdown_report(grid_run.results, analyse(grid_run.results), grid_run.status)
    assert "## Regret of stopping by forecast" in text and f"{regret['regret_points']:+.1f}" in text
