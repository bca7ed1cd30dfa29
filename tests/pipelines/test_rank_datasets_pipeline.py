"""rank_datasets under Kedro's SequentialRunner: candidates from a glob, one excluded with its error, the rest
ranked by a predictor trained on a runs table whose features the tiny model really measures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.errors import UserFacingError
from finetune_predictor.pipelines import rank_datasets
from finetune_predictor.pipelines.rank_datasets.nodes import candidate_paths, plot_ranking
from finetune_predictor.prediction import predictor as core
from finetune_predictor.prediction import ranking

DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate",
        "train_per_class": 4, "test_per_class": 3, "seed": 1}


def _write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_rank_datasets_pipeline(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "candidates"
    folder.mkdir()
    _write(folder / "clean.jsonl", list(iter_articles(40, seed=3)))
    noisy = list(iter_articles(40, seed=4))
    for record in noisy[::3]:
        record["output"] = "fake" if record["output"] == "legitimate" else "legitimate"
    _write(folder / "noisy.jsonl", noisy)
    _write(folder / "broken.jsonl", [{"instruction": "x", "input": "y"}])  # no output: excluded, not a crash
    rng = np.random.default_rng(0)
    runs = pd.DataFrame({"mf_size": rng.uniform(4, 200, 40), "mf_label_balance": rng.uniform(0.5, 1, 40),
                         "dataset_family": [f"f{i % 4}" for i in range(40)], "model": "m",
                         "replicate_key": [f"k{i}" for i in range(40)]})
    runs["finetuned_primary"] = 0.5 + 0.001 * runs["mf_size"] + rng.normal(0, 0.01, 40)
    settings = core.PredictorSettings.from_params({"candidates": ["ridge_cv"], "min_runs": 10, "n_folds": 3})
    card = core.to_json(core.train_final(runs, settings))
    pipeline = rank_datasets.create_pipeline()
    catalog = DataCatalog({
        "params:rank": MemoryDataset({"candidates": str(folder / "*.jsonl"), "top_reasons": 2}),
        "params:data": MemoryDataset(DATA),
        "params:model": MemoryDataset({"name": str(tiny_model_dir), "max_length": 256}),
        "params:model_registry": MemoryDataset({}),
        "params:training": MemoryDataset({"per_device_train_batch_size": 4, "precision": "fp32"}),
        "params:meta_features": MemoryDataset({"sample_size": 4, "probe_steps": 2, "knn": 2, "cache": False}),
        "preflight.int.passed": MemoryDataset(True),
        "predictor.model_input.runs_table_if_saved": MemoryDataset(runs),
        "predictor.model.card_if_saved": MemoryDataset(card),
    })
    for name in pipeline.outputs():
        catalog[name] = MemoryDataset()
    # The plot node is run by hand below: Kedro releases the ranking after its last reader.
    nodes = pipeline.only_nodes("rank_datasets.ranking_method", "rank_datasets.candidate_features",
                                "rank_datasets.rank_candidates")
    SequentialRunner().run(nodes, catalog)
    ranking = catalog.load("rank_datasets.reporting.ranking")
    assert plot_ranking(ranking).axes[0].get_title().startswith("Candidate training sets")
    assert list(ranking.columns[:5]) == ["candidate", "predicted", "lower", "upper", "rank"]
    assert ranking["rank"].tolist()[:2] == [1, 2] and ranking["candidate"].iloc[-1].endswith("broken.jsonl")
    assert "missing field 'output'" in ranking["error"].iloc[-1]
    assert (ranking["lower"].iloc[:2] <= ranking["predicted"].iloc[:2]).all()
    # Beside the predictor's rank, the no-fitting rank by label learnability (ties share a rank).
    assert ranking["label_learnability"].iloc[:2].between(0, 1).all()
    assert set(ranking["prior_rank"].iloc[:2]) <= {1, 2} and np.isnan(ranking["prior_rank"].iloc[-1])
    metrics = catalog.load("rank_datasets.tracking.metrics")
    assert metrics["rank_n_candidates"]["value"] == 2 and metrics["rank_by_predictor"]["value"] == 1
    assert "Candidate ranking" in capsys.readouterr().out


def _candidates(folder):
    folder.mkdir()
    _write(folder / "clean.jsonl", list(iter_articles(60, seed=3)))
    noisy = list(iter_articles(60, seed=4))
    for record in noisy[::2]:  # half the labels flipped: nothing left to learn
        record["output"] = "fake" if record["output"] == "legitimate" else "legitimate"
    _write(folder / "a_noisy.jsonl", noisy)  # listed first: the rank must not follow the listing
    return folder


def test_with_no_saved_predictor_the_prior_ranks_without_loading_a_model(tmp_path, capsys):
    """A team with no runs yet (no card, no runs table) used to be refused; now the classification candidates are
    ranked by the no-fitting prior, with no forecast and no model loaded (the model named here does not exist)."""
    pipeline = rank_datasets.create_pipeline()
    catalog = DataCatalog({
        "params:rank": MemoryDataset({"candidates": str(_candidates(tmp_path / "candidates"))}),
        "params:data": MemoryDataset({**DATA, "train_per_class": 20}),
        "params:model": MemoryDataset({"name": str(tmp_path / "no-such-model")}),
        "params:model_registry": MemoryDataset({}), "params:training": MemoryDataset({}),
        "params:meta_features": MemoryDataset({"cache": False}), "preflight.int.passed": MemoryDataset(True),
        "predictor.model_input.runs_table_if_saved": MemoryDataset(None),
        "predictor.model.card_if_saved": MemoryDataset(None)})
    for name in pipeline.outputs():
        catalog[name] = MemoryDataset()
    SequentialRunner().run(pipeline.only_nodes("rank_datasets.ranking_method", "rank_datasets.candidate_features",
                                               "rank_datasets.rank_candidates"), catalog)
    ranking = catalog.load("rank_datasets.reporting.ranking")
    assert [name.split("/")[-1] for name in ranking["candidate"]] == ["clean.jsonl", "a_noisy.jsonl"]
    assert ranking["rank"].tolist() == [1, 2] and ranking["prior_rank"].tolist() == [1, 2]
    assert ranking["predicted"].isna().all() and ranking["lower"].isna().all()
    metrics = catalog.load("rank_datasets.tracking.metrics")
    assert metrics["rank_n_candidates"]["value"] == 2 and metrics["rank_by_predictor"]["value"] == 0
    assert "ranked by mf_label_cv_balanced_accuracy alone" in capsys.readouterr().out
    axis = plot_ranking(ranking).axes[0]  # the prior drawn, not an empty plot of missing forecasts
    assert axis.get_xlabel().startswith("mf_label_cv_balanced_accuracy") and len(axis.lines[0].get_xdata()) == 2


def test_an_open_task_with_no_saved_predictor_is_refused_before_any_candidate_is_measured():
    from finetune_predictor.pipelines.rank_datasets import nodes

    with pytest.raises(UserFacingError) as caught:
        nodes.ranking_method(None, None, {"task": "qa"})
    assert "no saved predictor to rank qa candidates" in caught.value.what
    assert "kedro run --pipeline=predictor" in caught.value.fix
    assert nodes.ranking_method({"model": "ridge_cv"}, pd.DataFrame(), {"task": "qa"}) == "predictor"
    # A card without the runs table it is refitted from used to pass as "no predictor", then crash in the ranking.
    with pytest.raises(UserFacingError, match="the saved predictor is incomplete") as caught:
        nodes.ranking_method({"model": "ridge_cv"}, None, DATA)
    assert caught.value.where == "predictor.model_input.runs_table"


def test_in_prior_mode_a_candidate_without_a_prior_stays_unranked():
    from finetune_predictor.pipelines.rank_datasets import nodes

    features = pd.DataFrame([{"candidate": "a.jsonl", "error": None, "mf_label_cv_balanced_accuracy": np.nan},
                             {"candidate": "b.jsonl", "error": None, "mf_label_cv_balanced_accuracy": 0.7},
                             {"candidate": "c.jsonl", "error": "missing field 'output'"}])
    ranking, metrics = nodes.rank_candidates(features, None, None, {})
    assert ranking["candidate"].tolist() == ["b.jsonl", "a.jsonl", "c.jsonl"]
    assert ranking["rank"].tolist()[0] == 1 and ranking["rank"].iloc[1:].isna().all()
    assert metrics["rank_n_candidates"]["value"] == 1


def test_candidates_must_exist(tmp_path):
    with pytest.raises(UserFacingError, match="no candidates to rank"):
        candidate_paths({})
    with pytest.raises(UserFacingError, match="matches no data file"):
        candidate_paths({"candidates": str(tmp_path / "*.jsonl")})


def test_a_predictor_that_shipped_the_mean_ranks_by_the_no_fitting_prior(monkeypatch, capsys):
    """Every candidate gets the mean's forecast: the rank is the prior's, not the order the files were listed in
    (before, a.jsonl, listed first, ranked first)."""
    from finetune_predictor.pipelines.rank_datasets import nodes

    monkeypatch.setattr(nodes, "predict_with_reasons", lambda *args, **kwargs: {
        "predicted": 0.6, "interval": (0.5, 0.7), "reasons": []})
    features = pd.DataFrame([{"candidate": "a.jsonl", "error": None, "mf_label_cv_balanced_accuracy": 0.55},
                             {"candidate": "b.jsonl", "error": None, "mf_label_cv_balanced_accuracy": 0.80}])
    card = {"model": "baseline_mean", "target": "finetuned_primary", "interval_alpha": 0.1}
    ranking, _ = nodes.rank_candidates(features, pd.DataFrame(), card, {"order_by": "predictor"})
    assert ranking.set_index("candidate")["prior_rank"].to_dict() == {"a.jsonl": 2.0, "b.jsonl": 1.0}
    assert ranking.set_index("candidate")["rank"].to_dict() == {"a.jsonl": 2.0, "b.jsonl": 1.0}
    assert "ranked by mf_label_cv_balanced_accuracy alone" in capsys.readouterr().out


def test_by_default_the_prior_ranks_and_a_cross_family_forecast_is_shown_beside_it(monkeypatch, capsys):
    """The forecast of a predictor fitted on other runs put the worst LIAR candidate first (Spearman -0.40 vs the
    prior's 0.40): by default (rank.order_by auto) the rank follows the prior on a task that has it, and the
    forecast, its interval and its own rank are shown beside it."""
    from finetune_predictor.pipelines.rank_datasets import nodes

    forecasts = iter([0.70, 0.60])  # the forecast prefers a.jsonl, the prior b.jsonl
    monkeypatch.setattr(nodes, "predict_with_reasons", lambda *args, **kwargs: {
        "predicted": next(forecasts), "interval": (0.5, 0.8), "reasons": []})
    features = pd.DataFrame([{"candidate": "a.jsonl", "error": None, "mf_label_cv_balanced_accuracy": 0.55},
                             {"candidate": "b.jsonl", "error": None, "mf_label_cv_balanced_accuracy": 0.80}])
    card = {"model": "ridge_cv", "target": "finetuned_primary", "interval_alpha": 0.1}
    ranking, _ = nodes.rank_candidates(features, pd.DataFrame(), card, {"order_by": "auto"})
    table = ranking.set_index("candidate")
    assert table["rank"].to_dict() == {"a.jsonl": 2.0, "b.jsonl": 1.0}
    assert table["forecast_rank"].to_dict() == {"a.jsonl": 1.0, "b.jsonl": 2.0}
    assert "ties broken by the forecast" in capsys.readouterr().out


def test_ranking_scores_lead_with_the_prior_by_default_and_with_the_forecast_when_asked():
    auto = ranking.ranking_scores([0.7, 0.6, 0.65, np.nan, 0.6], [0.1, 0.9, 0.9, 0.99, np.nan])
    order = list(np.argsort(-np.nan_to_num(auto, nan=-1.0), kind="stable"))
    assert order[:4] == [3, 2, 1, 0] and np.isnan(auto[4])  # prior first, then the forecast; no prior: unranked
    # A task without the prior (QA, structured): the forecast ranks.
    assert list(np.argsort(-ranking.ranking_scores([0.2, 0.8, 0.5], None))) == [1, 2, 0]
    with pytest.raises(ValueError, match=r"rank\.order_by"):
        ranking.ranking_scores([0.5], [0.5], "prior_only")
    scores = ranking.ranking_scores([0.7, 0.6, 0.6, np.nan, 0.6], [0.1, 0.9, 0.5, 0.99, np.nan], "predictor")
    order = list(np.argsort(-np.nan_to_num(scores, nan=-1.0)))
    assert order[:4] == [0, 1, 2, 4] and np.isnan(scores[3])  # forecast first, then the prior; no forecast: last
    assert list(np.argsort(-ranking.ranking_scores([0.5] * 3, [0.2, 0.8, 0.5]))) == [1, 2, 0]
