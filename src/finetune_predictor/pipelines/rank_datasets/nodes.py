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

from finetune_predictor.data import task_data
from finetune_predictor.data.records import RecordError
from finetune_predictor.data.splits import DataLeakError, InsufficientDataError
from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling.model_session import open_session
from finetune_predictor.modeling.models import default_cache_dir
from finetune_predictor.prediction.meta_features import ProbeSettings, compute_meta_features, task_features
from finetune_predictor.prediction.predictor import predict_with_reasons
from finetune_predictor.prediction.ranking import forecasts_tell_apart, ranking_scores
from finetune_predictor.tasks import TASK_TYPES, build_task, task_type
from finetune_predictor.tasks.base import RANKING_PRIOR_FEATURE

CANDIDATE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
BY_PREDICTOR, BY_PRIOR = "predictor", "prior"
RANKING_COLUMNS = ["candidate", "predicted", "lower", "upper", "rank", "reasons", "label_learnability", "prior_rank",
                   "forecast_rank", "error"]


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


def ranking_method(card: dict[str, Any] | None, runs_table: pd.DataFrame | None, data: dict[str, Any]) -> str:
    """How the candidates are ranked, settled before any is measured: by the saved predictor (``predictor``)
    once `kedro run --pipeline=predictor` has saved one; before that (a team with no runs yet) by the no-fitting
    prior (``prior``), which classification tasks have. An open task without a predictor is refused here, and so
    is a card without the runs table it is refitted from."""
    if (card is None) != (runs_table is None):
        raise UserFacingError("the saved predictor is incomplete: its card and its runs table are saved together",
                              "predictor.model.card" if card is None else "predictor.model_input.runs_table",
                              "run `kedro run --pipeline=predictor` again")
    if card is not None:
        return BY_PREDICTOR
    name = task_type(data)
    if RANKING_PRIOR_FEATURE in TASK_TYPES[name].feature_names:
        print(f"No saved predictor: the candidates are ranked by {RANKING_PRIOR_FEATURE} alone, with no forecast or "
              "interval, and the model probes are skipped. `kedro run --pipeline=predictor` on finished fine-tunes "
              "adds both (docs/predictor.md, 'Ranking candidates').")
        return BY_PRIOR
    raise UserFacingError(f"no saved predictor to rank {name} candidates with", "predictor.model.card",
                          "run `kedro run --pipeline=predictor` on a runs table of finished fine-tunes first; the "
                          f"ranking that needs none ({RANKING_PRIOR_FEATURE}) exists for classification tasks only")


def candidate_features(rank: dict[str, Any], data: dict[str, Any], model: dict[str, Any],
                       model_registry: dict[str, Any], training: dict[str, Any], meta_features: dict[str, Any],
                       method: str = BY_PREDICTOR, preflight_passed: bool = True) -> pd.DataFrame:
    """One row per candidate: its ``mf_*`` features on the training subset it would give (same sizes, same test
    set and same model session as a fine-tune), or the validation error that excludes it. Ranked by the prior
    (``method``), only the task's own features are measured: no model is loaded. Runs after the preflight gate
    (model, memory, settings)."""
    session = open_session(model, model_registry, "probe", str(training.get("precision", "auto"))) \
        if method == BY_PREDICTOR else None
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
        task = build_task(params, train["output"])
        features = (compute_meta_features(train, session, task, training, ProbeSettings.from_params(meta_features),
                                          cache_dir) if session is not None
                    else task_features(task, train.to_dict("records")))
        rows.append({"candidate": path, "error": None, **features})
    return pd.DataFrame(rows)


def rank_candidates(features: pd.DataFrame, runs_table: pd.DataFrame | None, card: dict[str, Any] | None,
                    rank: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The saved predictor's forecast for every valid candidate with its conformal interval and top SHAP
    reasons, ranked best first as ``rank.order_by`` says (:func:`ranking_scores`); with no saved predictor
    (``card`` None), the prior's order alone. Excluded candidates come last, with their error; printed and logged."""
    top = int(rank.get("top_reasons", 3))
    rows = []
    for row in features.to_dict("records"):
        if isinstance(row.get("error"), str):  # a table cell without error reads back as NaN, not None
            rows.append({"candidate": row["candidate"], "error": row["error"]})
            continue
        values = {k: v for k, v in row.items() if k.startswith("mf_") and isinstance(v, float) and math.isfinite(v)}
        answer = (predict_with_reasons(runs_table, card, values, top=top, family=Path(row["candidate"]).stem)
                  if card is not None else {"predicted": math.nan, "interval": (math.nan, math.nan), "reasons": []})
        reasons = "; ".join(f"{r['feature']}={r['value']:.3g} ({100 * r['shap']:+.1f} pts)" for r in answer["reasons"])
        rows.append({"candidate": row["candidate"], "predicted": answer["predicted"], "lower": answer["interval"][0],
                     "upper": answer["interval"][1], "reasons": reasons,
                     "label_learnability": values.get(RANKING_PRIOR_FEATURE, math.nan), "error": None})
    order_by = str(rank.get("order_by", "auto"))
    table = _ranked(pd.DataFrame(rows, columns=RANKING_COLUMNS), order_by)
    valid = table["rank"].notna()
    print(f"\nCandidate ranking by {_ranked_by(card, order_by, table.loc[valid, 'label_learnability'])}:")
    print(table.drop(columns=["reasons"]).round(3).to_string(index=False))
    tied = valid.any() and not forecasts_tell_apart(table.loc[valid, "predicted"])
    if card is not None and order_by == "predictor" and tied and table.loc[valid, "prior_rank"].notna().any():
        print(f"The shipped predictor ({card['model']}) gives every candidate the same forecast: it cannot tell them "
              f"apart, so they are ranked by {RANKING_PRIOR_FEATURE} alone (no fitting; docs/predictor.md, "
              "'Ranking candidates').")
    metrics = {"rank_n_candidates": float(valid.sum()), "rank_n_excluded": float((~valid).sum()),
               "rank_by_predictor": float(card is not None)}
    return table.round(4), {key: {"value": value, "step": 0} for key, value in metrics.items()}


def _ranked(table: pd.DataFrame, order_by: str) -> pd.DataFrame:
    """Best first by :func:`ranking_scores` (``rank.order_by``), stable, so candidates still tied keep the order
    their files were listed in; unranked rows (excluded, or with nothing to rank them by) last."""
    table["_order"] = ranking_scores(table["predicted"], table["label_learnability"], order_by)
    table = table.sort_values("_order", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    ranked = table.pop("_order").notna()
    table.loc[ranked, "rank"] = range(1, int(ranked.sum()) + 1)
    table["prior_rank"] = table["label_learnability"].rank(ascending=False, method="min")
    table["forecast_rank"] = table["predicted"].rank(ascending=False, method="min")
    return table


def _ranked_by(card: dict[str, Any] | None, order_by: str, prior: pd.Series) -> str:
    """What the printed rank follows, in words."""
    if card is None:
        return f"{RANKING_PRIOR_FEATURE} (no saved predictor)"
    forecast = f"{card['model']} ({card['target']}, {100 * (1 - card['interval_alpha']):.0f}% intervals)"
    if order_by == "auto" and prior.notna().any():
        return (f"{RANKING_PRIOR_FEATURE}, ties broken by the forecast of {forecast}: the prior ranked candidates "
                "better in every candidate study (rank.order_by=predictor ranks by the forecast)")
    return f"the forecast of {forecast}, ties broken by {RANKING_PRIOR_FEATURE}"


def plot_ranking(ranking: pd.DataFrame) -> Figure:
    """Predicted score per candidate with its interval, best at the top; the prior per candidate where no
    predictor was saved (no forecast to draw)."""
    by_prior = ranking["predicted"].isna().all() and ranking["rank"].notna().any()
    valid = ranking[ranking["rank"].notna()].sort_values("rank", ascending=False)
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.45 * max(1, len(valid))), constrained_layout=True)
    names = [Path(str(c)).name for c in valid["candidate"]]
    if by_prior:
        axis.plot(valid["label_learnability"], range(len(valid)), "o")
        axis.set_xlabel(f"{RANKING_PRIOR_FEATURE} (no saved predictor: no forecast)")
    else:
        axis.errorbar(valid["predicted"], range(len(valid)), xerr=[valid["predicted"] - valid["lower"],
                                                                   valid["upper"] - valid["predicted"]],
                      fmt="o", capsize=3)
        axis.set_xlabel("predicted fine-tuned score (interval)")
    axis.set_yticks(range(len(valid)), names)
    axis.set_title("Candidate training sets, ranked before training")
    axis.grid(alpha=0.3)
    return figure
