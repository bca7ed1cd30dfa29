"""Nodes of the rank_datasets pipeline."""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor import task_data
from finetune_predictor.errors import UserFacingError
from finetune_predictor.meta_features import ProbeSettings, compute_meta_features
from finetune_predictor.model_session import open_session
from finetune_predictor.models import default_cache_dir
from finetune_predictor.predictor import forecasts_tell_apart, predict_with_reasons, ranking_scores
from finetune_predictor.records import RecordError
from finetune_predictor.splits import DataLeakError, InsufficientDataError
from finetune_predictor.tasks import build_task
from finetune_predictor.tasks.base import RANKING_PRIOR_FEATURE

CANDIDATE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
RANKING_COLUMNS = ["candidate", "predicted", "lower", "upper", "rank", "reasons", "label_learnability", "prior_rank",
                   "error"]


def candidate_paths(rank: dict[str, Any]) -> list[str]:
    """``rank.candidates``: a folder (every data file in it) or a glob (``data/candidates/*.jsonl``)."""
    spec = rank.get("candidates")
    if not spec:
        raise UserFacingError("no candidates to rank", "rank.candidates",
                              'give a folder or a glob, e.g. --params "rank.candidates=data/candidates/*.jsonl"')
    path = Path(str(spec))
    found = (sorted(str(p) for p in path.iterdir() if p.suffix.lower() in CANDIDATE_SUFFIXES) if path.is_dir()
             else sorted(glob.glob(str(spec))))
    if not found:
        raise UserFacingError(f"rank.candidates={spec!r} matches no data file", "rank.candidates",
                              f"point it at a folder or glob of {', '.join(CANDIDATE_SUFFIXES)} files")
    return found


def candidate_features(rank: dict[str, Any], data: dict[str, Any], model: dict[str, Any],
                       model_registry: dict[str, Any], training: dict[str, Any], meta_features: dict[str, Any],
                       preflight_passed: bool = True) -> pd.DataFrame:
    """One row per candidate: its ``mf_*`` features on the training subset it would give (same sizes, same test
    set and same model session as a fine-tune), or the validation error that excludes it. Runs after the
    preflight gate (model, memory, settings)."""
    session = open_session(model, model_registry, "probe", str(training.get("precision", "auto")))
    cache_dir = Path(meta_features.get("cache_dir") or default_cache_dir() / "meta_features")
    rows = []
    for path in candidate_paths(rank):
        params = {**data, "path": path, "family": data.get("family") or Path(path).stem}
        try:
            records, _, read_summary = task_data.load_task_records(params)
            train, _, _ = task_data.split_train_test(records, read_summary, params)
        except (RecordError, InsufficientDataError, DataLeakError, ValueError) as error:
            print(f"  candidate {path}: excluded: {error}")
            rows.append({"candidate": path, "error": str(error)})
            continue
        features = compute_meta_features(train, session, build_task(params, train["output"]), training,
                                         ProbeSettings.from_params(meta_features), cache_dir)
        rows.append({"candidate": path, "error": None, **features})
    return pd.DataFrame(rows)


def rank_candidates(features: pd.DataFrame, runs_table: pd.DataFrame, card: dict[str, Any],
                    rank: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The saved predictor's forecast for every valid candidate with its conformal interval and top SHAP
    reasons, ranked best first (excluded candidates last, with their error); printed and logged."""
    top = int(rank.get("top_reasons", 3))
    rows = []
    for row in features.to_dict("records"):
        if isinstance(row.get("error"), str):  # a table cell without error reads back as NaN, not None
            rows.append({"candidate": row["candidate"], "error": row["error"]})
            continue
        values = {k: v for k, v in row.items() if k.startswith("mf_") and isinstance(v, float) and math.isfinite(v)}
        answer = predict_with_reasons(runs_table, card, values, top=top, family=Path(row["candidate"]).stem)
        reasons = "; ".join(f"{r['feature']}={r['value']:.3g} ({100 * r['shap']:+.1f} pts)" for r in answer["reasons"])
        rows.append({"candidate": row["candidate"], "predicted": answer["predicted"], "lower": answer["interval"][0],
                     "upper": answer["interval"][1], "reasons": reasons,
                     "label_learnability": values.get(RANKING_PRIOR_FEATURE), "error": None})
    table = pd.DataFrame(rows, columns=RANKING_COLUMNS)
    table["_order"] = ranking_scores(table["predicted"], table["label_learnability"])
    table = table.sort_values("_order", ascending=False, na_position="last", kind="stable").drop(columns="_order")
    table = table.reset_index(drop=True)
    valid = table["predicted"].notna()
    table.loc[valid, "rank"] = range(1, int(valid.sum()) + 1)
    table["prior_rank"] = table["label_learnability"].rank(ascending=False, method="min")
    print(f"\nCandidate ranking by {card['model']} ({card['target']}, {100 * (1 - card['interval_alpha']):.0f}% "
          f"intervals; ties broken by {RANKING_PRIOR_FEATURE}):")
    print(table.drop(columns=["reasons"]).round(3).to_string(index=False))
    if (valid.any() and not forecasts_tell_apart(table.loc[valid, "predicted"])
            and table.loc[valid, "prior_rank"].notna().any()):
        print(f"The shipped predictor ({card['model']}) gives every candidate the same forecast: it cannot tell them "
              f"apart, so they are ranked by {RANKING_PRIOR_FEATURE} alone (no fitting; docs/predictor.md, "
              "'Ranking candidates').")
    metrics = {"rank_n_candidates": float(valid.sum()), "rank_n_excluded": float((~valid).sum())}
    return table.round(4), {key: {"value": value, "step": 0} for key, value in metrics.items()}


def plot_ranking(ranking: pd.DataFrame) -> Figure:
    """Predicted score per candidate with its interval, best at the top."""
    valid = ranking[ranking["predicted"].notna()].iloc[::-1]
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.45 * max(1, len(valid))), constrained_layout=True)
    names = [Path(str(c)).name for c in valid["candidate"]]
    axis.errorbar(valid["predicted"], range(len(valid)), xerr=[valid["predicted"] - valid["lower"],
                                                               valid["upper"] - valid["predicted"]],
                  fmt="o", capsize=3)
    axis.set_yticks(range(len(valid)), names)
    axis.set_xlabel("predicted fine-tuned score (interval)")
    axis.set_title("Candidate training sets, ranked before training")
    axis.grid(alpha=0.3)
    return figure
