"""The outcome predictor: meta-features of past runs -> the fine-tuned primary metric (accuracy, QA F1,
structured field accuracy), with an interval and reasons.

Honest by construction:
- splits: ``random`` = K folds grouped by ``replicate_key`` (seed twins never straddle a fold), and one
  leave-one-group-out split per group column (``grouped_dataset_family``, ``grouped_model``), each scored
  on its own;
- the shipped model (``selected``) is chosen by nested cross-validation among LightGBM on SHAP-selected
  features, LightGBM with linear trees, ridge and elastic-net on scaled features, a stacked blend, *and*
  the baselines (mean, best single feature, ridge, early stopping): it is never a model that loses to a
  baseline inside the training folds (:mod:`finetune_predictor.prediction.model_selection`);
- intervals: split-conformal with the finite-sample conservative rank, calibrated on replicate-grouped
  folds for a known family and on leave-one-family-out folds for a new one.

Errors are in points of the target metric (x100).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from finetune_predictor.errors import UserFacingError
from finetune_predictor.prediction.cv_splits import calibration_folds, groups_of_table, split_indices
from finetune_predictor.prediction.model_selection import (
    CANDIDATES,
    FitFunction,
    GroupsOf,
    Model,
    all_models,
    contributions,
    lightgbm_model,
    selected_model,
    shap_ranking,
)

logger = logging.getLogger(__name__)

POINTS = 100.0  # a metric in [0, 1] -> points


SOURCE_CORPUS = "source_corpus"


@dataclass(frozen=True)
class PredictorSettings:
    target_column: str = "finetuned_primary"
    group_columns: tuple[str, ...] = ("dataset_family", SOURCE_CORPUS, "model", "task")
    # Families that share their texts (LIAR's binary and six-way files hold the same statements): one source
    # corpus, held out together by the grouped_source_corpus split. A family not listed is its own corpus.
    source_corpora: dict[str, str] = field(default_factory=dict)
    feature_prefix: str = "mf_"
    feature_columns: tuple[str, ...] = ()  # explicit list; empty = every numeric column with the prefix
    n_folds: int = 5
    min_runs: int = 30
    shap_mass: float = 0.9
    interval_alpha: float = 0.1
    seed: int = 0
    # The models the nested choice compares, beside the baselines (which always take part).
    candidates: tuple[str, ...] = CANDIDATES
    lightgbm: dict[str, Any] = field(default_factory=lambda: {
        "n_estimators": 300, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 5,
        "subsample": 0.9, "subsample_freq": 1, "colsample_bytree": 0.9, "verbose": -1})

    @classmethod
    def from_params(cls, values: dict[str, Any] | None) -> PredictorSettings:
        values = dict(values or {})
        if values.get("group_column"):  # the single-column spelling of the external-table convention
            values["group_columns"] = [values["group_column"]]
        for key in ("table_path", "experiment_name", "group_column"):
            values.pop(key, None)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown predictor setting(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        unknown_models = sorted(set(values.get("candidates") or ()) - set(CANDIDATES))
        if unknown_models:
            raise ValueError(f"predictor.candidates {unknown_models} are unknown; choose from {list(CANDIDATES)}")
        for key in ("group_columns", "feature_columns", "candidates"):
            if key in values and values[key] is not None:
                values[key] = tuple([values[key]] if isinstance(values[key], str) else values[key])
        return cls(**{k: v for k, v in values.items() if v is not None})


# --- the runs table ----------------------------------------------------------------------------------------


def feature_columns(table: pd.DataFrame, settings: PredictorSettings) -> list[str]:
    if settings.feature_columns:
        missing = [c for c in settings.feature_columns if c not in table]
        if missing:
            raise UserFacingError(f"predictor.feature_columns not in the runs table: {missing}",
                                  "predictor.feature_columns", "name columns of the runs table, or set it to null")
        return list(settings.feature_columns)
    excluded = {"mf_feature_seconds", "mf_probe_seconds", "mf_cost_ratio"}  # cost, not a property of the run
    # Sorted: mlflow.search_runs orders metric columns differently from one process to the next, and
    # LightGBM's ties (and so the SHAP selection) follow column order; unsorted, two runs disagreed.
    columns = sorted(c for c in table.columns if c.startswith(settings.feature_prefix) and c not in excluded
                     and pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().any())
    if not columns:
        raise UserFacingError(f"no run in the store has meta-features (no numeric column starting with "
                              f"{settings.feature_prefix!r}): every run was logged without them",
                              "sensitivity.meta_features (null in the sweeps that logged these runs)",
                              "run a sweep with meta-features on (the default), e.g. kedro run --pipeline=sensitivity")
    return columns


def runs_with_features(table: pd.DataFrame, settings: PredictorSettings) -> pd.DataFrame:
    """The runs that have at least one feature value. Runs logged without meta-features (a plain
    mini_test100 run, a sweep with ``sensitivity.meta_features: null``) would otherwise enter as rows of
    NaN that LightGBM and the median-filled baselines treat differently; they are counted and left out."""
    columns = feature_columns(table, settings)
    has_features = table[columns].notna().any(axis=1)
    if not has_features.all():
        logger.warning("%d of %d runs have no %s features and are left out of the predictor's table "
                       "(re-run their sweep with sensitivity.meta_features set: features are added without "
                       "retraining)", int((~has_features).sum()), len(table), settings.feature_prefix or "feature")
    return with_source_corpus(table[has_features].reset_index(drop=True), settings)


def with_source_corpus(table: pd.DataFrame, settings: PredictorSettings) -> pd.DataFrame:
    """The table with ``source_corpus``: each run's family through ``predictor.source_corpora`` (a family not
    listed is its own corpus). A table that has the column already keeps it."""
    if SOURCE_CORPUS in table or "dataset_family" not in table:
        return table
    families = table["dataset_family"]
    return table.assign(**{SOURCE_CORPUS: families.map(lambda family: settings.source_corpora.get(family, family))
                           .where(families.notna())})


# --- evaluation ----------------------------------------------------------------------------------------------


def conformal_quantile(x: pd.DataFrame, y: np.ndarray, fit: Callable[..., Any], alpha: float,
                       folds: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Split-conformal half-width (CV flavour) from the out-of-fold |residuals| over ``folds``: the
    finite-sample conservative rank, the ceil((n+1)(1-alpha))-th smallest residual (infinite when n is
    too small for that rank). Folds by replicate key give the width for a known family; leave one family
    out gives the width for a new one."""
    from sklearn.model_selection import cross_val_predict

    if len(x) < 4 or len(folds) < 2:
        return float("inf")
    return conservative_quantile(np.abs(y - cross_val_predict(FitFunction(fit), x, y, cv=folds)), alpha)


def conservative_quantile(residuals: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest residual: split conformal's finite-sample guarantee (an
    interpolated quantile is smaller and under-covers); infinite when n is too small for the rank."""
    rank = math.ceil((len(residuals) + 1) * (1 - alpha))
    return float(np.sort(residuals)[rank - 1]) if rank <= len(residuals) else float("inf")


def selection_regret(frame: pd.DataFrame) -> float:
    """Mean over candidate groups (same family and model) of best true accuracy minus the true accuracy
    of the configuration the predictions rank first."""
    regrets = []
    keys = [c for c in ("dataset_family", "model") if c in frame]
    for _, group in frame.groupby(keys) if keys else [(None, frame)]:
        if len(group) >= 2:
            regrets.append(group["y"].max() - group.loc[group["prediction"].idxmax(), "y"])
    return float(np.mean(regrets)) if regrets else float("nan")


def evaluated_models(settings: PredictorSettings, groups_of: GroupsOf) -> dict[str, Model]:
    """The shipped model (``selected``: nested choice among candidates and baselines), then each candidate
    and baseline on its own, all scored on the same outer folds."""
    return {"selected": selected_model(settings, groups_of), "lightgbm_all": lightgbm_model(settings),
            **all_models(settings, groups_of)}


def evaluate(table: pd.DataFrame, settings: PredictorSettings) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every model on every split: RMSE/MAE (points), Spearman, within ±3 points, regret; interval
    coverage and width of the shipped model; the winners chosen inside the outer folds; the SHAP ranking
    of the SHAP-filtered LightGBM per fold and its stability."""
    table = table.reset_index(drop=True)
    features = feature_columns(table, settings)
    x, y = table[features].astype(float), table[settings.target_column].to_numpy(dtype=float)
    groups_of = groups_of_table(table)
    rows, rankings, winners = [], [], {}
    for split_name, folds in split_indices(table, settings).items():
        held_out_column = split_name.removeprefix("grouped_") if split_name.startswith("grouped_") else None
        for name, fit in evaluated_models(settings, groups_of).items():
            predictions, fitted = predict_out_of_fold(fit, x, y, folds)
            low, high = np.full(len(y), np.nan), np.full(len(y), np.nan)
            for model, train_idx, test_idx in fitted:
                if name == "selected":
                    winners.setdefault(split_name, []).append(model.winner)
                    # A held-out group is new to the model: calibrate on held-out groups of the same column.
                    winner_fit = all_models(settings, groups_of)[model.winner]
                    q = conformal_quantile(x.iloc[train_idx], y[train_idx], winner_fit, settings.interval_alpha,
                                           calibration_folds(table.iloc[train_idx], settings, held_out_column, True))
                    low[test_idx], high[test_idx] = predictions[test_idx] - q, predictions[test_idx] + q
                if name == "lightgbm_shap" and split_name == "random":
                    rankings.append(shap_ranking(model, x.iloc[train_idx][model.selected]).reindex(features)
                                    .fillna(0.0))
            rows.append(_scores(name, split_name, y, predictions, low, high, table))
    return pd.DataFrame(rows), {**_shap_stability(rankings, features), "winners": winners}


def predict_out_of_fold(fit: Model, x: pd.DataFrame, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
                        ) -> tuple[np.ndarray, list[tuple[Any, np.ndarray, np.ndarray]]]:
    """Each fold's held-out rows predicted by ``fit`` trained on the fold's other rows (NaN where no fold holds a
    row out), and each fold's fitted model with its indices."""
    predictions, fitted = np.full(len(y), np.nan), []
    for train_idx, test_idx in folds:
        model = fit(x.iloc[train_idx], y[train_idx])
        predictions[test_idx] = model(x.iloc[test_idx])
        fitted.append((model, train_idx, test_idx))
    return predictions, fitted


def _scores(name: str, split: str, y: np.ndarray, predictions: np.ndarray, low: np.ndarray, high: np.ndarray,
            table: pd.DataFrame) -> dict[str, Any]:
    mask = np.isfinite(predictions)
    error = (predictions[mask] - y[mask]) * POINTS
    rho = spearmanr(predictions[mask], y[mask]).statistic if mask.sum() > 2 else float("nan")
    frame = table.loc[mask, [c for c in ("dataset_family", "model") if c in table]].copy()
    frame["y"], frame["prediction"] = y[mask], predictions[mask]
    row = {"model": name, "split": split, "n": int(mask.sum()),
           "rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
           "spearman": float(rho) if rho == rho else float("nan"),
           "within3": float(np.mean(np.abs(error) <= 3.0)),
           "regret": selection_regret(frame) * POINTS}
    if np.isfinite(low).any():
        covered = (y >= low) & (y <= high)
        row["interval_coverage"] = float(np.mean(covered[mask]))
        row["interval_width"] = float(np.mean((high - low)[mask]) * POINTS)
    return row


def _shap_stability(rankings: list[pd.Series], features: list[str]) -> dict[str, Any]:
    if not rankings:
        return {"mean_abs_shap": {}, "rank_stability": float("nan")}
    stacked = pd.concat(rankings, axis=1)
    correlations = [spearmanr(stacked.iloc[:, i], stacked.iloc[:, j]).statistic
                    for i in range(stacked.shape[1]) for j in range(i + 1, stacked.shape[1])]
    finite = [c for c in correlations if np.isfinite(c)]
    return {"mean_abs_shap": stacked.mean(axis=1).sort_values(ascending=False).to_dict(),
            "rank_stability": float(np.mean(finite)) if finite else float("nan")}


# --- the final model: a card that names the winner; refitted deterministically from the runs table ----------


def table_fingerprint(table: pd.DataFrame, features: Sequence[str], target: str) -> str:
    """What the final model was fitted on: a predict run refits it only from this very table."""
    frame = table[[*features, target]].astype(float)
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


def fit_final(table: pd.DataFrame, card: dict[str, Any]) -> Any:
    """The card's winning model refitted on the runs table it was chosen on (seeded, single-threaded:
    the same model every time). Refuses a table that is not the one the card was made from."""
    settings = PredictorSettings.from_params(card["settings"])
    table = table.reset_index(drop=True)
    if table_fingerprint(table, card["features"], card["target"]) != card["table_sha256"]:
        raise ValueError("The runs table differs from the one the predictor was trained on: run "
                         "`kedro run --pipeline=predictor` again before predicting.")
    x, y = table[card["features"]].astype(float), table[card["target"]].to_numpy(dtype=float)
    return all_models(settings, groups_of_table(table))[card["model"]](x, y)


def train_final(table: pd.DataFrame, settings: PredictorSettings) -> dict[str, Any]:
    """Choose the model on every run (inner CV over candidates and baselines), calibrate its conformal
    half-widths, and describe it in a JSON card (the model is refitted from the runs table when used)."""
    import lightgbm
    import shap
    import sklearn

    table = table.reset_index(drop=True)
    features = feature_columns(table, settings)
    x, y = table[features].astype(float), table[settings.target_column].to_numpy(dtype=float)
    groups_of = groups_of_table(table)
    chosen = selected_model(settings, groups_of)(x, y)
    fit = all_models(settings, groups_of)[chosen.winner]
    half_width = conformal_quantile(x, y, fit, settings.interval_alpha, calibration_folds(table, settings, None, False))
    family = _family_column(table, settings)
    families = sorted(table[family].astype(str).unique()) if family else []
    # A new family may be a sibling of a known one or a corpus never seen: calibrated leaving one source corpus
    # out where families share corpora (the wider, honest width), else one family.
    held_out = SOURCE_CORPUS if family == "dataset_family" and table.get(SOURCE_CORPUS, pd.Series()).nunique() >= 2 \
        else family
    new_family_half_width = (conformal_quantile(x, y, fit, settings.interval_alpha,
                                                calibration_folds(table, settings, held_out, True))
                             if len(families) >= 2 else None)
    return {"model": chosen.winner, "inner_cv_rmse": {k: v * POINTS for k, v in chosen.inner_rmse.items()},
            "selection_rule": "simplest model within one standard error of the best inner CV RMSE",
            "selection_threshold": chosen.threshold * POINTS,
            "target": settings.target_column, "features": features, "selected_features": list(chosen.columns),
            "settings": asdict(settings), "table_sha256": table_fingerprint(table, features, settings.target_column),
            "interval_alpha": settings.interval_alpha, "interval_half_width": half_width,
            "family_column": family, "families": families, "interval_half_width_new_family": new_family_half_width,
            "training_runs": len(table), "feature_medians": x.median().to_dict(),
            "versions": {"lightgbm": lightgbm.__version__, "shap": shap.__version__, "sklearn": sklearn.__version__}}


def _family_column(table: pd.DataFrame, settings: PredictorSettings) -> str | None:
    """The first group column present (the dataset family by default): the unit a new candidate may be new in."""
    return next((column for column in settings.group_columns if column in table), None)


def interval_for(card: dict[str, Any], family: str | None) -> tuple[float, str]:
    """The conformal half-width for a candidate, and which calibration it comes from: a family the predictor
    was trained on gets the random-split width; a new one the leave-one-family-out width when there is one."""
    known = card.get("families") or []
    if family is None or family in known or not known:
        return card["interval_half_width"], "known family" if family in known else "random-split calibration"
    if card.get("interval_half_width_new_family") is not None:
        return card["interval_half_width_new_family"], f"new family {family!r} (leave-one-family-out calibration)"
    return card["interval_half_width"], (f"new family {family!r}, but the predictor saw one family only: "
                                         "the interval is likely too narrow")


def predict_with_reasons(table: pd.DataFrame, card: dict[str, Any], features: dict[str, float],
                         top: int = 5, family: str | None = None) -> dict[str, Any]:
    """Prediction, conformal interval and the top SHAP reasons for one candidate (from ``family``), by the
    card's winning model refitted on ``table``."""
    model = fit_final(table, card)
    background = table[card["features"]].astype(float)
    row = pd.DataFrame([{name: features.get(name, card["feature_medians"].get(name)) for name in card["features"]}])
    prediction = float(model(row)[0])
    values = contributions(model, background, row).iloc[0]
    order = values.abs().sort_values(ascending=False).index[:top]
    half_width, calibration = interval_for(card, family)
    return {
        "predicted": prediction,
        "target": card["target"],
        "model": card["model"],
        "interval": [prediction - half_width, prediction + half_width],
        "interval_level": 1 - card["interval_alpha"],
        "interval_calibration": calibration,
        "reasons": [{"feature": name, "value": float(row.iloc[0][name]), "shap": float(values[name])}
                    for name in order if values[name] != 0],
        "missing_features": sorted(set(card["selected_features"]) - set(features)),
    }


def to_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
