"""Score a candidate study: several candidate training sets for one task and one test set, each fully trained
(the truth), ranked from meta-features only.

The question a team asks is "which of these training sets should we fine-tune on?", before training any.
The headline ranking (``rank_spearman``, ``rank_top1_regret``) is the one rank_datasets would give that team:
the predictor chosen on runs of other data only (cold start: nothing on this data is known), ties broken by
the no-fitting prior, so a predictor that ships the mean leaves the prior to rank. Beside it: the predictor
under leave-one-candidate-out (the other candidates of this study known, seed replicates held out
together), the cold-start forecast alone, the prior alone, the best single feature, a random pick, and the
noise floor of the truth itself (seed-to-seed rank agreement, binomial error of the test set).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from finetune_predictor.prediction.cv_splits import groups_of_table
from finetune_predictor.prediction.model_selection import best_single_feature_model, mean_model, selected_model
from finetune_predictor.prediction.predictor import POINTS, PredictorSettings, feature_columns
from finetune_predictor.prediction.ranking import forecast_leads, ranking_scores
from finetune_predictor.tasks.base import RANKING_PRIOR_FEATURE

CANDIDATE = "param_data_variant"


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table else pd.Series(None, index=table.index, dtype=object)


def _equals(values: pd.Series, wanted: Any) -> pd.Series:
    """Params come back as text: compare numbers as numbers (``1e-3`` is ``0.001``)."""
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        return pd.to_numeric(values, errors="coerce") == float(wanted)
    return values.astype(str) == str(wanted)


def study_runs(table: pd.DataFrame, study: dict[str, Any], test_sha256: str) -> pd.Series:
    """Which rows of the runs table are the study's: its candidates, at its training size, on its test set, with
    its configuration (``candidate_study.configuration``: run params such as ``learning_rate``)."""
    mask = (_column(table, CANDIDATE).isin([str(c) for c in study["candidates"]])
            & (_column(table, "param_test_sha256") == test_sha256))
    if study.get("train_size") is not None:
        mask &= _equals(_column(table, "param_train_size"), float(study["train_size"]))
    for key, value in (study.get("configuration") or {}).items():
        mask &= _equals(_column(table, f"param_{key}"), value)
    return mask


def same_candidate(table: pd.DataFrame, in_study: pd.Series, candidate: str) -> pd.Series:
    """Every run of ``candidate`` on the study's data, at any size, on any test set, with any configuration: a
    smaller nested subset of the same candidate, or another sweep's run of it, would tell the predictor the
    answer."""
    datasets = set(_column(table, "dataset")[in_study].astype(str))
    return (_column(table, CANDIDATE) == candidate) & _column(table, "dataset").astype(str).isin(datasets)


def same_data(table: pd.DataFrame, in_study: pd.Series) -> pd.Series:
    """Every run on the study's data (any variant, size, test set): what a team that has trained nothing on it
    yet does not have."""
    datasets = set(_column(table, "dataset")[in_study].astype(str))
    return in_study | _column(table, "dataset").astype(str).isin(datasets)


def _predict_held_out(table: pd.DataFrame, features: list[str], target: str, held_out: pd.Series,
                      in_study: pd.Series, fit: Callable[..., Any], min_runs: int) -> np.ndarray:
    """Fit on every run outside ``held_out``; predict the study's runs among the held-out ones. With fewer
    than ``min_runs`` runs to learn from there is no honest prediction (and the nested choice cannot even
    form its inner folds): NaN, reported as not scored."""
    train = table[~held_out]
    rows = held_out & in_study
    if len(train) < min_runs:
        return np.full(int(rows.sum()), np.nan)
    model = fit(train[features].astype(float), train[target].to_numpy(dtype=float))
    return np.asarray(model(table.loc[rows, features].astype(float)), dtype=float)


def predictions_by_protocol(table: pd.DataFrame, in_study: pd.Series, settings: PredictorSettings
                            ) -> dict[str, np.ndarray]:
    """Per study run, its prediction under each protocol: ``loco`` (the predictor chosen without any run of
    that candidate on this data: :func:`same_candidate`), ``cold_start`` (without any run on this data:
    :func:`same_data`), ``best_single_feature`` and ``mean`` (the baselines, held out like ``loco``; the mean of
    the other candidates is anti-correlated with the truth by construction, so a predictor that ranks like it
    has learned nothing from the features)."""
    features, target = feature_columns(table, settings), settings.target_column
    selected = selected_model(settings, groups_of_table(table))
    study = table[in_study]
    out = {name: np.full(len(study), np.nan) for name in ("loco", "best_single_feature", "mean", "cold_start")}
    positions = {index: k for k, index in enumerate(study.index)}
    least = 2 * settings.n_folds
    for candidate in study[CANDIDATE].unique():
        held_out = same_candidate(table, in_study, candidate)
        rows = [positions[i] for i in table.index[held_out & in_study]]
        out["loco"][rows] = _predict_held_out(table, features, target, held_out, in_study, selected, least)
        out["best_single_feature"][rows] = _predict_held_out(table, features, target, held_out, in_study,
                                                             best_single_feature_model, least)
        out["mean"][rows] = _predict_held_out(table, features, target, held_out, in_study, mean_model, least)
    # The no-fitting ranking needs no runs table, which the study's few candidates cannot supply: under
    # leave-one-candidate-out the property that sets a candidate apart (its imbalance, say) never varies.
    if RANKING_PRIOR_FEATURE in study:  # a score to rank by, not a prediction in points
        out["prior"] = study[RANKING_PRIOR_FEATURE].to_numpy(dtype=float)
    out["cold_start"][:] = _predict_held_out(table, features, target, same_data(table, in_study), in_study,
                                             selected, least)
    return out


def _spearman(a: pd.Series, b: pd.Series) -> float:
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _regret(actual: pd.Series, predicted: pd.Series) -> float:
    """Points lost by training the predicted-best candidate instead of the truly best. Candidates tied at the
    top are a coin toss among them: their mean regret (a ranking that ties everything scores as a random
    pick, not as whichever candidate the table happens to list first)."""
    if predicted.isna().all():
        return float("nan")
    top = predicted == predicted.max()
    return float((actual.max() - actual[top].mean()) * POINTS)


def seed_ceiling(study: pd.DataFrame, target: str) -> float:
    """Mean Spearman between the candidates' scores under two different seeds: how well one seed's truth ranks
    the candidates as another seed's does, the noise floor of the ranking itself (NaN with a single seed; the
    truth the predictor is scored on averages the seeds, so it is somewhat less noisy than this)."""
    wide = study.pivot_table(index=CANDIDATE, columns="param_seed", values=target, aggfunc="mean")
    columns = [c for c in wide.columns if wide[c].notna().all()]
    pairs = [_spearman(wide[a], wide[b]) for i, a in enumerate(columns) for b in columns[i + 1:]]
    finite = [p for p in pairs if math.isfinite(p)]
    return float(np.mean(finite)) if finite else float("nan")


def candidate_table(study: pd.DataFrame, predictions: dict[str, np.ndarray], target: str,
                    order_by: str = "auto") -> pd.DataFrame:
    """One row per candidate: its true score (mean over seeds, with the seed spread), the predictions under
    every protocol, and the predicted and true ranks. The shipped rank is the one rank_datasets would give a
    team that has trained none of the candidates (:func:`ranking_scores` of the cold-start forecast, fitted on
    other data only, and the prior, as ``rank.order_by`` says)."""
    frame = study[[CANDIDATE, target]].copy()
    for name, values in predictions.items():
        frame[f"predicted_{name}"] = values
    grouped = frame.groupby(CANDIDATE)
    table = grouped.mean().rename(columns={target: "actual"})
    table["actual_seed_sd"] = grouped[target].std(ddof=1)
    table["runs"] = grouped.size()
    table = table.reset_index().rename(columns={CANDIDATE: "candidate"})
    # The shipped order is rank_datasets' one row per candidate: forecast and prior averaged over seeds first.
    # With no other data to fit on there is no forecast at all: scored as a ranking that ties every candidate (a
    # random pick), as under a predictor that ships the mean, where a task has no prior to fall back on.
    forecast = table["predicted_cold_start"].fillna(0.0) if table["predicted_cold_start"].isna().all() \
        else table["predicted_cold_start"]
    table["shipped_score"] = ranking_scores(forecast, table.get("predicted_prior"), order_by)
    table["predicted"] = table["predicted_cold_start"]  # the shipped forecast, in points (NaN: no other data)
    table["rank"] = table["shipped_score"].rank(ascending=False, method="min")
    table["actual_rank"] = table["actual"].rank(ascending=False, method="min")
    return table.sort_values("rank").reset_index(drop=True)


def study_metrics(table: pd.DataFrame, study: pd.DataFrame, target: str, order_by: str = "auto") -> dict[str, float]:
    """``rank_spearman`` / ``rank_top1_regret`` (the shipped ranking: :func:`candidate_table`), the same for
    every other protocol (``_loco``, ``_cold_start``, ``_prior``) and the baselines, a random pick's expected
    regret, and the noise floor: the seed-to-seed Spearman of the truth and the binomial standard error of
    one test score."""
    actual = table["actual"]
    metrics = {"rank_n_candidates": float(len(table)), "rank_n_runs": float(len(study)),
               "rank_n_scored_loco": float(table["predicted_loco"].notna().sum()),
               "rank_n_scored_cold_start": float(table["predicted_cold_start"].notna().sum()),
               "rank_spearman": _spearman(table["shipped_score"], actual),
               "rank_top1_regret": _regret(actual, table["shipped_score"]),
               # 0: the headline is the prior's ranking (rank.order_by auto on a task with the prior, or no
               # cold-start forecast told the candidates apart).
               "rank_shipped_by_forecast": float(forecast_leads(table["predicted_cold_start"],
                                                                 table.get("predicted_prior"), order_by))}
    for name in ("loco", "cold_start", "best_single_feature", "mean", "prior"):
        if f"predicted_{name}" not in table:
            continue
        metrics[f"rank_spearman_{name}"] = _spearman(table[f"predicted_{name}"], actual)
        metrics[f"rank_top1_regret_{name}"] = _regret(actual, table[f"predicted_{name}"])
    metrics["rank_top1_regret_random"] = float((actual.max() - actual.mean()) * POINTS)
    metrics["rank_seed_ceiling_spearman"] = seed_ceiling(study, target)
    test_size = pd.to_numeric(study.get("param_test_size"), errors="coerce").median()
    p = float(actual.mean())
    metrics["rank_truth_binomial_se"] = (float(math.sqrt(p * (1 - p) / test_size) * POINTS)
                                         if test_size and 0 <= p <= 1 else float("nan"))
    metrics["rank_truth_seed_sd"] = float(table["actual_seed_sd"].mean() * POINTS)
    return {key: value for key, value in metrics.items() if math.isfinite(value)}
