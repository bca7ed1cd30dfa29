"""Nodes of the candidate_study pipeline: thin wrappers over :mod:`.study`."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor import tracking
from finetune_predictor.errors import UserFacingError
from finetune_predictor.pipelines.candidate_study import study
from finetune_predictor.prediction.predictor import POINTS, PredictorSettings, runs_with_features
from finetune_predictor.tasks.base import RANKING_PRIOR_FEATURE


def load_study_table(candidate_study: dict[str, Any], predictor: dict[str, Any]) -> pd.DataFrame:
    """FINISHED runs with meta-features from the MLflow experiment the predictor reads."""
    settings = PredictorSettings.from_params(predictor)
    table = tracking.runs_table(str(candidate_study.get("experiment_name") or tracking.EXPERIMENT_NAME))
    if table.empty:
        raise UserFacingError("No finished runs in the MLflow experiment", "candidate_study.experiment_name",
                              "train the candidates first: kedro run --pipeline=sensitivity --env=candidate_study")
    return runs_with_features(table, settings)


def score_study(table: pd.DataFrame, split_summary: dict[str, Any] | None, candidate_study: dict[str, Any],
                predictor: dict[str, Any], rank: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """The study's candidates on its test set (``candidate_study.test_sha256``, or the last sweep's test set;
    ``split_summary`` None: no sweep ran here): their truth beside the shipped ranking and every other
    protocol's; ``rank_spearman``, ``rank_top1_regret`` with baselines and the noise floor. Printed, logged as
    metrics and written as a Markdown report; the shipped ranking orders as ``rank.order_by`` does in
    rank_datasets."""
    settings = PredictorSettings.from_params(predictor)
    if not candidate_study.get("test_sha256") and split_summary is None:
        raise UserFacingError("no test set to score the study on: candidate_study.test_sha256 is not set and no "
                              "sweep has saved its split summary here", "candidate_study.test_sha256",
                              "set it to the study's test set (param_test_sha256 of its runs in MLflow), or run "
                              "`kedro run --pipeline=sensitivity --env=<the study's environment>` first")
    test_sha256 = str(candidate_study.get("test_sha256") or split_summary["test_sha256"])
    in_study = study.study_runs(table, candidate_study, test_sha256)
    found = sorted(table.loc[in_study, study.CANDIDATE].unique())
    missing = sorted(set(map(str, candidate_study["candidates"])) - set(found))
    if len(found) < 3:
        raise UserFacingError(f"only {len(found)} of the study's candidates have finished runs with features on test "
                              f"set {test_sha256} (missing: {missing})",
                              "candidate_study.candidates, candidate_study.configuration, candidate_study.test_sha256",
                              "train them first (`kedro run --pipeline=sensitivity --env=<the study's environment>`, "
                              "e.g. candidate_study), or set the "
                              "study's candidates, configuration and test set to those of a sweep that ran")
    predictions = study.predictions_by_protocol(table, in_study, settings)
    runs = table[in_study]
    order_by = str(rank.get("order_by", "auto"))
    ranking = study.candidate_table(runs, predictions, settings.target_column, order_by)
    metrics = study.study_metrics(ranking, runs, settings.target_column, order_by)
    report = markdown(ranking, metrics, missing, len(table) - len(runs))
    print("\n" + report)
    return ranking.round(4), {key: {"value": value, "step": 0} for key, value in metrics.items()}, report


def _points(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{POINTS * value:.1f}"


def _figure(metrics: dict[str, float], key: str, digits: int = 2) -> str:
    return f"{metrics[key]:.{digits}f}" if key in metrics else "n/a"


def markdown(ranking: pd.DataFrame, metrics: dict[str, float], missing: list[str], other_runs: int) -> str:
    """The study's report: the headline figures with their baselines and noise floor, then the table."""
    lines = [
        "# Candidate study: ranking training sets before training them", "",
        f"{len(ranking)} candidates, {metrics['rank_n_runs']:.0f} fully trained runs (the truth); "
        f"{other_runs} other runs in the store. The shipped ranking is what rank_datasets gives a team that has "
        f"trained none of them. By default (rank.order_by auto) that is {RANKING_PRIOR_FEATURE}'s order, ties "
        "broken by the forecast of the predictor chosen on other data only; with rank.order_by predictor, the "
        "forecast's order, ties broken by the prior (which alone ranks when the forecast ties everything).", "",
        "| ranking | Spearman | top-1 regret (points) |", "| --- | --- | --- |",
        f"| **shipped** (rank_datasets) | {_figure(metrics, 'rank_spearman')} | "
        f"{_figure(metrics, 'rank_top1_regret', 1)} |",
        f"| predictor, leave-one-candidate-out (the other candidates trained) | "
        f"{_figure(metrics, 'rank_spearman_loco')} | {_figure(metrics, 'rank_top1_regret_loco', 1)} |",
        f"| predictor, cold start (no run on this data known) | {_figure(metrics, 'rank_spearman_cold_start')} | "
        f"{_figure(metrics, 'rank_top1_regret_cold_start', 1)} |",
        f"| baseline: best single feature | {_figure(metrics, 'rank_spearman_best_single_feature')} | "
        f"{_figure(metrics, 'rank_top1_regret_best_single_feature', 1)} |",
        f"| no fitting: rank by {RANKING_PRIOR_FEATURE} | {_figure(metrics, 'rank_spearman_prior')} | "
        f"{_figure(metrics, 'rank_top1_regret_prior', 1)} |",
        f"| baseline: mean of the other candidates (anti-correlated by construction) | "
        f"{_figure(metrics, 'rank_spearman_mean')} | {_figure(metrics, 'rank_top1_regret_mean', 1)} |",
        f"| baseline: random pick | 0 (expected) | {_figure(metrics, 'rank_top1_regret_random', 1)} |",
        f"| noise floor: seed-to-seed agreement of the truth | {_figure(metrics, 'rank_seed_ceiling_spearman')} | — |",
        "",
        f"Noise floor of each true score: binomial standard error {_figure(metrics, 'rank_truth_binomial_se', 1)} "
        f"points on the test set, seed spread {_figure(metrics, 'rank_truth_seed_sd', 1)} points (mean SD).", "",
        "| candidate | actual (points) | actual rank | shipped rank | forecast, cold start (points) | "
        "leave-one-out (points) | runs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {row.candidate} | {POINTS * row.actual:.1f} | {row.actual_rank:.0f} | {row.rank:.0f} | "
          f"{_points(row.predicted_cold_start)} | {_points(row.predicted_loco)} | {row.runs} |"
          for row in ranking.itertuples()),
    ]
    if not metrics.get("rank_shipped_by_forecast"):
        lines[4:4] = [f"The shipped ranking here is {RANKING_PRIOR_FEATURE}'s (rank.order_by auto, or no cold-start "
                      "forecast told the candidates apart), so `rank_spearman` equals `rank_spearman_prior` unless "
                      "the forecast broke a tie in the prior.", ""]
    if missing:
        lines += ["", f"Candidates without finished runs (not ranked): {', '.join(missing)}"]
    return "\n".join(lines) + "\n"


def plot_study(ranking: pd.DataFrame) -> Figure:
    """Shipped rank per candidate against its actual score: a good ranking falls from the top left."""
    figure, axis = plt.subplots(figsize=(6, 5), constrained_layout=True)
    axis.scatter(ranking["actual"] * POINTS, ranking["rank"])
    for row in ranking.itertuples():
        axis.annotate(str(row.candidate), (row.actual * POINTS, row.rank), fontsize=8,
                      xytext=(3, 3), textcoords="offset points")
    axis.invert_yaxis()
    axis.set_xlabel("actual fine-tuned score (points, mean over seeds)")
    axis.set_ylabel("shipped rank before training (1 = best)")
    axis.set_title("Candidate study: ranked before training vs actual")
    axis.grid(alpha=0.3)
    return figure
