"""The candidate study: a source variant draws its subset from another source without touching the test set;
the study's ranking is scored leave-one-candidate-out beside its baselines and noise floor, and the
candidate_study pipeline runs under Kedro's SequentialRunner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.data import task_data
from finetune_predictor.data.splits import normalised_text
from finetune_predictor.pipelines.candidate_study import create_pipeline
from finetune_predictor.pipelines.candidate_study.study import study_runs
from finetune_predictor.pipelines.sensitivity.grid import DataVariant, SweepConfig, expand_grid
from finetune_predictor.pipelines.sensitivity.runner import SweepData
from finetune_predictor.tasks import build_task
from tests.conftest import PROJECT_ROOT
from tests.pipelines.test_predictor_pipeline import KeptDataset

TEST_SHA = "t" * 16
LEGACY_KEY = "a8bb5e9f36ff5370"  # SweepConfig("m", 16, 1e-3, 8, 32, 0.1, 3, 42).key("fp", {}) at commit d2be8e7
CANDIDATES = {"clean": 0.80, "noisy10": 0.74, "noisy30": 0.62, "dup50": 0.70, "imbalanced80": 0.66,
              "easy_source": 0.58, "hard_source": 0.77}


def study_table(seed: int = 0, other_runs: int = 24) -> pd.DataFrame:
    """Runs of seven candidates (two seeds each) whose noise and duplicate features explain their score,
    plus runs of other studies (another test set) that follow the same law."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, truth in CANDIDATES.items():
        for run_seed in (42, 43):
            rows.append({"param_data_variant": name, "param_test_sha256": TEST_SHA, "param_train_size": "64",
                         "param_seed": str(run_seed), "param_test_size": "200", "truth": truth})
    for k in range(other_runs):
        rows.append({"param_data_variant": f"other{k % 6}", "param_test_sha256": "o" * 16,
                     "param_train_size": "64", "param_seed": str(42 + k % 2), "param_test_size": "200",
                     "truth": float(rng.uniform(0.55, 0.85)), "dataset": "other-data"})
    # The same candidate at a smaller size (another sweep's nested subset): not the study's, yet it knows the answer.
    rows.append({"param_data_variant": "clean", "param_test_sha256": TEST_SHA, "param_train_size": "32",
                 "param_seed": "42", "param_test_size": "200", "truth": 0.78})
    table = pd.DataFrame(rows)
    table["dataset"] = table["dataset"].fillna("bundled-synthetic-news") if "dataset" in table else "bundled"
    # The features a candidate shows before training: its score plus measurement noise.
    table["mf_conflicting_label_rate"] = (0.85 - table["truth"]) + rng.normal(0, 0.005, len(table))
    table["mf_noise_feature"] = rng.normal(size=len(table))
    table["finetuned_primary"] = table["truth"] + rng.normal(0, 0.005, len(table))
    table["replicate_key"] = table["param_data_variant"] + table["param_test_sha256"]
    table["dataset_family"], table["model"], table["task"] = "news", "m", "binary_classification"
    return table.drop(columns="truth")


PREDICTOR = {"n_folds": 3, "candidates": ["ridge_cv"], "lightgbm": {"n_estimators": 30, "verbose": -1}}
STUDY = {"candidates": list(CANDIDATES), "train_size": 64, "test_sha256": None}


def test_candidate_study_pipeline_scores_the_shipped_ranking_and_leave_one_out(capsys):
    pipeline = create_pipeline().only_nodes("candidate_study.score_study", "candidate_study.plot_study")
    catalog = DataCatalog({
        "candidate_study.model_input.runs_table": MemoryDataset(study_table()),
        "sensitivity.reporting.split_summary_if_saved": MemoryDataset({"test_sha256": TEST_SHA}),
        "params:candidate_study": MemoryDataset(STUDY), "params:predictor": MemoryDataset(PREDICTOR),
        "params:rank": MemoryDataset({"order_by": "predictor"})})
    for name in pipeline.all_outputs():
        catalog[name] = KeptDataset()
    SequentialRunner().run(pipeline, catalog)
    metrics = {key: value["value"] for key, value in catalog.load("candidate_study.tracking.metrics").items()}
    assert metrics["rank_n_candidates"] == 7 and metrics["rank_n_runs"] == 14
    assert metrics["rank_spearman"] >= 0.8 and metrics["rank_top1_regret"] <= 3  # shipped: cold start here
    assert metrics["rank_spearman_loco"] >= 0.8 and metrics["rank_top1_regret_loco"] <= 3
    assert metrics["rank_top1_regret_random"] > metrics["rank_top1_regret"]
    # The mean of the other candidates is anti-correlated with the truth by construction (leave one out): the
    # predictor that learned from the features must be far above it.
    assert metrics["rank_spearman_mean"] < 0 < metrics["rank_spearman_loco"]
    for name in ("rank_spearman_cold_start", "rank_spearman_best_single_feature", "rank_seed_ceiling_spearman",
                 "rank_truth_binomial_se"):
        assert name in metrics, name
    ranking = catalog.load("candidate_study.reporting.ranking")
    assert ranking["candidate"].iloc[0] == "clean"
    assert set(ranking.columns) >= {"candidate", "predicted", "rank", "actual", "actual_rank"}
    assert "leave-one-candidate-out" in capsys.readouterr().out


def test_a_study_needs_no_sweep_here_when_its_test_set_is_named(tmp_path):
    """candidate_study read the last sweep's split summary even with candidate_study.test_sha256 set, so a store
    copied from elsewhere (no sweep run here) was refused; now the named test set is enough, and with neither the
    one message says what to set."""
    from finetune_predictor.errors import UserFacingError
    from finetune_predictor.pipelines.candidate_study.nodes import score_study

    _, metrics, _ = score_study(study_table(), None, {**STUDY, "test_sha256": TEST_SHA}, PREDICTOR, {})
    assert metrics["rank_n_candidates"]["value"] == 7
    with pytest.raises(UserFacingError, match="no test set to score the study on") as caught:
        score_study(study_table(), None, STUDY, PREDICTOR, {})
    assert caught.value.where == "candidate_study.test_sha256"


def test_a_candidate_is_never_predicted_from_its_own_runs(monkeypatch):
    """Every fit that predicts a candidate saw none of that candidate's runs (seeds together); the cold-start
    fit saw no run of the study at all."""
    from finetune_predictor.pipelines.candidate_study import study
    from finetune_predictor.prediction.predictor import PredictorSettings

    table = study_table()
    in_study = study_runs(table, STUDY, TEST_SHA)
    calls = []  # (candidates trained on, candidates predicted)

    def recording_fit(x, y):
        def predict(new):
            variant = table["param_data_variant"]
            calls.append((set(variant[x.index]), set(variant[new.index])))
            return np.full(len(new), float(np.mean(y)))
        return predict

    monkeypatch.setattr(study, "selected_model", lambda *_: recording_fit)
    monkeypatch.setattr(study, "best_single_feature_model", recording_fit)
    study.predictions_by_protocol(table, in_study, PredictorSettings.from_params(PREDICTOR))
    assert len(calls) == 2 * 7 + 1  # leave-one-candidate-out (predictor, best single feature) + cold start
    for trained, predicted in calls[:-1]:
        assert len(predicted) == 1 and not trained & predicted  # the clean run at n=32 included
    trained, predicted = calls[-1]
    assert predicted == set(CANDIDATES) and not trained & set(CANDIDATES)  # nothing on the study's data


def test_the_study_is_its_own_configuration():
    """Another sweep's runs of a candidate (same size and test set, another learning rate) are not its truth."""
    table = study_table()
    table["param_learning_rate"] = "0.001"
    table.loc[0, "param_learning_rate"] = "0.0003"
    assert study_runs(table, {**STUDY, "configuration": {"learning_rate": 1.0e-3}}, TEST_SHA).sum() == 13


def test_study_runs_filter_on_test_set_size_and_candidates():
    table = study_table()
    mask = study_runs(table, {**STUDY, "candidates": ["clean", "dup50"]}, TEST_SHA)
    assert mask.sum() == 4
    assert study_runs(table, {**STUDY, "train_size": 128}, TEST_SHA).sum() == 0


def test_source_variant_draws_from_another_source_and_keeps_the_test_set_out():
    import yaml

    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_data.yml").read_text())["data"]
    data = {**base, "synthetic": {"num_records": 800, "seed": 7, "difficulty": "standard"}, "test_per_class": 20}
    records, _, summary = task_data.load_task_records(data)
    subsets, test, validation, pool, split = task_data.nested_subsets(records, summary, data, [8, 16], 5)
    sweep_data = SweepData(subsets, test, validation, pool, split)
    task = build_task(data, records["output"])
    variant = DataVariant("easy_source", source={"synthetic": {"difficulty": "easy"}})
    assert variant.source == '{"synthetic": {"difficulty": "easy"}}' and hash(variant)
    configs = [SweepConfig("m", size, 1e-3, 8, 32, 0.1, 3, 42, variant) for size in (8, 16)]
    sweep_data.add_sources(configs, data, task)
    small, large = (sweep_data.training_set(config, task) for config in configs)
    assert len(small) == 16 and len(large) == 32 and set(small["id"]) <= set(large["id"])  # nested, balanced
    assert (small["output"].value_counts() == 8).all()
    held_out = set(map(normalised_text, test["instruction"], test["input"])) | set(
        map(normalised_text, validation["instruction"], validation["input"]))
    assert not held_out & set(map(normalised_text, large["instruction"], large["input"]))
    own = sweep_data.training_set(SweepConfig("m", 16, 1e-3, 8, 32, 0.1, 3, 42), task)
    assert not set(own["input"]) & set(large["input"])  # another generator's text, not the sweep's own
    assert sweep_data.fingerprint(configs[1]) != sweep_data.fingerprint(
        SweepConfig("m", 16, 1e-3, 8, 32, 0.1, 3, 42))
    assert configs[1].variant.as_params()["data_source"] == variant.source


def test_a_variant_without_source_keeps_its_resume_key_and_params():
    """Adding the source field must not re-key a finished sweep or change its runs' replicate keys."""
    clean = SweepConfig("m", 16, 1e-3, 8, 32, 0.1, 3, 42)
    assert "data_source" not in clean.variant.as_params()
    # The digest this configuration had at d2be8e7, before variants had a source.
    assert clean.key("fp", {}) == LEGACY_KEY


def test_source_variant_settings_are_checked():
    with pytest.raises(ValueError, match="source and positive_share"):
        DataVariant("x", positive_share=0.8, source={"path": "a.jsonl"})
    grid = expand_grid({"train_per_class": [8], "learning_rates": [1e-3],
                        "data_variants": [{"name": "s", "source": {"synthetic": {"difficulty": "hard"}}}]}, "m")
    assert grid[0].variant.source == '{"synthetic": {"difficulty": "hard"}}'


def test_a_misspelt_source_is_refused_naming_the_variant():
    """synthetic.dificulty would otherwise be ignored and the 'other source' be the sweep's own data again."""
    import yaml

    from finetune_predictor.settings_schema import SettingsError

    data = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_data.yml").read_text())["data"]
    with pytest.raises(SettingsError, match=r"sensitivity\.data_variants\.easy\.source") as caught:
        task_data.source_subsets(data, {"synthetic": {"dificulty": "easy"}}, [], ["fake", "legitimate"], [8],
                                 "sensitivity.data_variants.easy.source")
    assert "difficulty" in str(caught.value)  # the closest known key


def test_too_few_runs_to_learn_from_are_not_scored_rather_than_crash():
    """The cold start learns from other data only: with a handful of runs the nested choice cannot form its
    inner folds (LightGBM was handed an empty fold); such a protocol is reported as not scored."""
    from finetune_predictor.pipelines.candidate_study import study
    from finetune_predictor.prediction.predictor import PredictorSettings

    table = study_table(other_runs=3)
    in_study = study_runs(table, STUDY, TEST_SHA)
    predictions = study.predictions_by_protocol(table, in_study, PredictorSettings.from_params(PREDICTOR))
    assert np.isnan(predictions["cold_start"]).all() and np.isfinite(predictions["loco"]).all()
    ranking = study.candidate_table(table[in_study], predictions, "finetuned_primary")
    metrics = study.study_metrics(ranking, table[in_study], "finetuned_primary")
    assert metrics["rank_n_scored_cold_start"] == 0 and "rank_spearman_cold_start" not in metrics


def _prior_metrics(table: pd.DataFrame) -> dict[str, float]:
    from finetune_predictor.pipelines.candidate_study.study import (
        candidate_table,
        predictions_by_protocol,
        study_metrics,
    )
    from finetune_predictor.prediction.predictor import PredictorSettings

    in_study = study_runs(table, STUDY, TEST_SHA)
    predictions = predictions_by_protocol(table, in_study, PredictorSettings.from_params(PREDICTOR))
    ranking = candidate_table(table[in_study], predictions, "finetuned_primary")
    return study_metrics(ranking, table[in_study], "finetuned_primary")


def test_the_no_fitting_prior_ranks_by_the_learnability_feature_alone():
    """With too few candidates for any fitted ranking (the real study: 7 candidates, nothing else in the store),
    the study still scores the ranking by the label-learnability feature itself: no fit, no truth seen."""
    from finetune_predictor.tasks.base import RANKING_PRIOR_FEATURE

    table = study_table(other_runs=0)
    table[RANKING_PRIOR_FEATURE] = table["param_data_variant"].map(CANDIDATES)  # the truth's order
    metrics = _prior_metrics(table)
    assert metrics["rank_spearman_prior"] == pytest.approx(1.0) and metrics["rank_top1_regret_prior"] == 0.0
    # No other data to fit a cold-start predictor on: what ships (rank_datasets) is the prior's order.
    assert "rank_spearman_cold_start" not in metrics
    assert metrics["rank_spearman"] == pytest.approx(1.0) and metrics["rank_top1_regret"] == 0.0
    # Clean turns out worst, which the feature cannot know: it is still picked first (6 ranks off, the others 1).
    clean = table["param_data_variant"] == "clean"
    table.loc[clean, "finetuned_primary"] -= 0.30
    metrics = _prior_metrics(table)
    assert metrics["rank_spearman_prior"] == pytest.approx(1 - 6 * (36 + 6) / (7 * 48), abs=0.01)
    assert metrics["rank_top1_regret_prior"] == pytest.approx(100 * (0.77 - 0.50), abs=1.5)
    assert metrics["rank_top1_regret"] == metrics["rank_top1_regret_prior"]


def test_a_cold_start_predictor_that_ships_the_mean_leaves_the_ranking_to_the_prior():
    """Other data that says nothing about this study (a constant score): the cold-start fit is the mean, every
    candidate ties, and the prior ranks them (before, the tie fell to the order of the table)."""
    from finetune_predictor.tasks.base import RANKING_PRIOR_FEATURE

    table = study_table(other_runs=24)
    other = table["param_test_sha256"] != TEST_SHA
    table.loc[other, "finetuned_primary"] = 0.7
    table[RANKING_PRIOR_FEATURE] = table["param_data_variant"].map(CANDIDATES).fillna(0.5)
    metrics = _prior_metrics(table)
    assert metrics["rank_n_scored_cold_start"] == 7 and "rank_spearman_cold_start" not in metrics  # all tie
    assert metrics["rank_spearman"] == pytest.approx(1.0) and metrics["rank_top1_regret"] == 0.0
    assert metrics["rank_shipped_by_forecast"] == 0.0  # the report says the headline is the prior's


def test_a_ranking_that_ties_every_candidate_scores_as_a_random_pick_not_as_the_first_listed():
    """QA and structured tasks have no prior: with nothing to fit on, every candidate ties. The regret was that
    of the first row (clean, alphabetically first and the true best: 0 points) for a ranking that chose nothing."""
    table = study_table(other_runs=0)
    metrics = _prior_metrics(table)
    assert "rank_spearman" not in metrics and metrics["rank_shipped_by_forecast"] == 0.0
    assert metrics["rank_top1_regret"] == pytest.approx(metrics["rank_top1_regret_random"])
    assert metrics["rank_top1_regret"] > 5
