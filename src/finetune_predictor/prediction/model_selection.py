"""The predictor's models: baselines, candidates, and the choice among them by cross-validation.

Every model is a function ``fit(x, y) -> predict`` whose ``predict(frame)`` returns predictions and
carries what explaining it needs (``columns``; ``booster`` for trees, ``linear`` for linear models).

The shipped model is whichever of the candidates *and* the baselines scores the lowest RMSE under
cross-validation inside the training data (folds grouped by replicate key, so seed twins never straddle
a fold): a LightGBM that loses to ridge is not shipped, and on a table with no signal the mean is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from scipy.stats import spearmanr
from sklearn.base import BaseEstimator, RegressorMixin

Predict = Callable[[pd.DataFrame], np.ndarray]
Model = Callable[[pd.DataFrame, np.ndarray], Predict]
GroupsOf = Callable[[pd.Index], np.ndarray]
EARLY_STOPPING_FEATURES = ("mf_initial_loss", "mf_loss_decay_rate")
CANDIDATES = ("lightgbm_shap", "lightgbm_linear_tree", "ridge_cv", "elastic_net", "stacked")


class FitFunction(RegressorMixin, BaseEstimator):
    """A ``fit(x, y) -> predict`` model as the scikit-learn estimator ``cross_val_predict`` clones."""

    def __init__(self, fit_function: Model) -> None:
        self.fit_function = fit_function

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> FitFunction:
        self.predict_ = self.fit_function(x, y)
        return self

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return self.predict_(x)


def _tag(predict: Any, **attributes: Any) -> Predict:
    for name, value in attributes.items():
        setattr(predict, name, value)
    return predict


# --- baselines ---------------------------------------------------------------------------------------------


def mean_model(x: pd.DataFrame, y: np.ndarray) -> Predict:
    from sklearn.dummy import DummyRegressor

    model = DummyRegressor(strategy="mean").fit(x, y)
    return _tag(lambda new: model.predict(new), columns=[])


def linear_model(columns: Sequence[str], regressor: Callable[[], Any] | None = None) -> Model:
    """Median-imputed, standardised ``columns`` into a linear regressor (Ridge with alpha 1 by default)."""
    def fit(x: pd.DataFrame, y: np.ndarray) -> Predict:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        cols = [c for c in columns if c in x]
        if not cols:
            return mean_model(x, y)
        model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                              regressor() if regressor else Ridge(alpha=1.0)).fit(x[cols], y)
        return _tag(lambda new: model.predict(new[cols]), columns=cols, linear=model)
    return fit


def ridge_model(x: pd.DataFrame, y: np.ndarray) -> Predict:
    return linear_model(list(x.columns))(x, y)


def best_single_feature_model(x: pd.DataFrame, y: np.ndarray) -> Predict:
    """The one feature with the largest |Spearman| on the training fold, fitted linearly."""
    scores = {}
    for column in x.columns:
        values = x[column]
        if values.nunique() > 1:
            rho = spearmanr(values.fillna(values.median()), y).statistic
            scores[column] = abs(rho) if np.isfinite(rho) else 0.0
    if not scores:
        return mean_model(x, y)
    return linear_model([max(scores, key=scores.get)])(x, y)


def early_stopping_model(x: pd.DataFrame, y: np.ndarray) -> Predict:
    return linear_model([c for c in EARLY_STOPPING_FEATURES if c in x])(x, y)


def baseline_models() -> dict[str, Model]:
    return {"baseline_mean": mean_model, "baseline_best_single_feature": best_single_feature_model,
            "baseline_ridge": ridge_model, "baseline_early_stopping": early_stopping_model}


# --- candidates --------------------------------------------------------------------------------------------


def lightgbm_model(settings: Any, **overrides: Any) -> Model:
    def fit(x: pd.DataFrame, y: np.ndarray) -> Predict:
        import lightgbm as lgb

        params = {**settings.lightgbm, "random_state": settings.seed, "deterministic": True, "n_jobs": 1,
                  **overrides}
        if len(x) < 4 * params.get("min_child_samples", 20):
            params["min_child_samples"] = max(2, len(x) // 4)
        columns = list(x.columns)
        data = x.fillna(x.median()) if params.get("linear_tree") else x  # linear leaves need values
        medians = x.median()
        model = lgb.LGBMRegressor(**params).fit(data, y)
        if params.get("linear_tree"):
            return _tag(lambda new: model.predict(new[columns].fillna(medians)), columns=columns, booster=model,
                        fill=medians)
        return _tag(lambda new: model.predict(new[columns]), columns=columns, booster=model)
    return fit


def shap_ranking(predict: Any, x: pd.DataFrame) -> pd.Series:
    """Mean |SHAP| per feature of a fitted LightGBM (TreeExplainer), largest first."""
    import shap

    values = shap.TreeExplainer(predict.booster).shap_values(x)
    return pd.Series(np.abs(values).mean(axis=0), index=x.columns).sort_values(ascending=False)


def select_by_shap(ranking: pd.Series, mass: float) -> list[str]:
    """The smallest set of top features that carries ``mass`` of the total mean |SHAP| (at least one)."""
    total = ranking.sum()
    if total <= 0:
        return list(ranking.index[:1])
    cumulative = ranking.cumsum() / total
    count = int((cumulative < mass).sum()) + 1
    return list(ranking.index[:count])


def shap_selected_model(settings: Any) -> Model:
    """Fit on all features, rank by SHAP on the training fold, refit on the selected ones."""
    def fit(x: pd.DataFrame, y: np.ndarray) -> Predict:
        first = lightgbm_model(settings)(x, y)
        selected = select_by_shap(shap_ranking(first, x), settings.shap_mass)
        refined = lightgbm_model(settings)(x[selected], y)
        return _tag(lambda new: refined(new[selected]), columns=selected, booster=refined.booster, selected=selected)
    return fit


def ridge_cv_model(groups_of: GroupsOf, seed: int) -> Model:
    """Ridge with its penalty chosen on folds that keep seed twins together (leave-one-out would pair a
    run with its twin and under-regularise)."""
    def fit(x: pd.DataFrame, y: np.ndarray) -> Predict:
        from sklearn.linear_model import RidgeCV

        folds = inner_folds(x, groups_of, 5, seed) or None
        # Scored by squared error: RidgeCV's default R^2 is undefined on a one-run fold (a warning per fold
        # and a NaN score, so the penalty was chosen among NaNs on small runs tables).
        return linear_model(list(x.columns), lambda: RidgeCV(alphas=np.logspace(-3, 3, 13), cv=folds,
                                                             scoring="neg_mean_squared_error"))(x, y)
    return fit


def elastic_net_model(groups_of: GroupsOf, seed: int) -> Model:
    """Elastic net with penalty and mix chosen on replicate-grouped folds."""
    def fit(x: pd.DataFrame, y: np.ndarray) -> Predict:
        from sklearn.linear_model import ElasticNetCV

        folds = inner_folds(x, groups_of, 5, seed) or min(5, len(x))
        return linear_model(list(x.columns), lambda: ElasticNetCV(l1_ratio=[0.1, 0.5, 0.9, 1.0], cv=folds,
                                                                 max_iter=20000))(x, y)
    return fit


def grouped_folds(frame: pd.DataFrame, groups: np.ndarray, n_folds: int,
                  seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled K folds that never split a group (seed replicates), K capped by the number of groups;
    none when there is a single group (nothing can be held out)."""
    from sklearn.model_selection import GroupKFold

    folds = min(n_folds, len(set(groups)))
    if folds < 2:
        return []
    return list(GroupKFold(folds, shuffle=True, random_state=seed).split(frame, groups=groups))


def inner_folds(x: pd.DataFrame, groups_of: GroupsOf, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds inside a training set that keep seed replicates together."""
    return grouped_folds(x, groups_of(x.index), n_folds, seed)


def out_of_fold(fit: Model, x: pd.DataFrame, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    from sklearn.model_selection import cross_val_predict

    return cross_val_predict(FitFunction(fit), x, y, cv=folds)


def stacked_model(members: dict[str, Model], groups_of: GroupsOf, seed: int) -> Model:
    """Non-negative least squares blend of the members' out-of-fold predictions, members refitted on all."""
    def fit(x: pd.DataFrame, y: np.ndarray) -> Predict:
        folds = inner_folds(x, groups_of, 3, seed)
        if not folds:
            return mean_model(x, y)
        oof = np.column_stack([out_of_fold(member, x, y, folds) for member in members.values()])
        weights, _ = nnls(oof, y)
        fitted = [member(x, y) for member in members.values()]
        return _tag(lambda new: np.column_stack([f(new) for f in fitted]) @ weights, columns=list(x.columns),
                    weights=dict(zip(members, weights.tolist(), strict=True)))
    return fit


def candidate_models(settings: Any, groups_of: GroupsOf) -> dict[str, Model]:
    """``predictor.candidates``; the stacked blend blends the other chosen candidates (at least two)."""
    models = {"lightgbm_shap": shap_selected_model(settings),
              "lightgbm_linear_tree": lightgbm_model(settings, linear_tree=True, linear_lambda=1.0),
              "ridge_cv": ridge_cv_model(groups_of, settings.seed),
              "elastic_net": elastic_net_model(groups_of, settings.seed)}
    chosen = {name: model for name, model in models.items() if name in settings.candidates}
    members = {name: chosen[name] for name in ("lightgbm_shap", "lightgbm_linear_tree", "ridge_cv") if name in chosen}
    if "stacked" in settings.candidates and len(members) >= 2:
        chosen["stacked"] = stacked_model(members, groups_of, settings.seed)
    return chosen


# Simplest first: the one-standard-error rule takes the first model within noise of the best.
SIMPLICITY = ("baseline_mean", "baseline_best_single_feature", "baseline_early_stopping", "baseline_ridge",
              "ridge_cv", "elastic_net", "lightgbm_shap", "lightgbm_linear_tree", "stacked")


def all_models(settings: Any, groups_of: GroupsOf) -> dict[str, Model]:
    """Every model the selection chooses from: the candidates and the baselines."""
    return {**candidate_models(settings, groups_of), **baseline_models()}


def one_standard_error_choice(fold_rmse: dict[str, np.ndarray]) -> tuple[str, float]:
    """The simplest model whose mean inner RMSE is within one standard error of the best one's (Hastie et
    al.'s rule): picking the bare minimum among candidates that differ by less than the fold noise chases
    that noise, and a baseline within noise of the best is the safer model to ship."""
    means = {name: float(values.mean()) for name, values in fold_rmse.items()}
    best = min(means, key=means.get)
    spread = fold_rmse[best]
    threshold = means[best] + (float(spread.std(ddof=1) / np.sqrt(len(spread))) if len(spread) > 1 else 0.0)
    simplest_first = sorted(means, key=lambda n: (SIMPLICITY.index(n), n))
    return next(name for name in simplest_first if means[name] <= threshold), threshold


def selected_model(settings: Any, groups_of: GroupsOf) -> Model:
    """Choose by inner cross-validated RMSE among every candidate and baseline (one-standard-error rule),
    then refit the winner on all of ``x``. Evaluated inside each outer fold, this is nested CV."""
    def fit(x: pd.DataFrame, y: np.ndarray) -> Predict:
        models = all_models(settings, groups_of)
        folds = inner_folds(x, groups_of, settings.n_folds, settings.seed)
        if not folds:
            fitted = mean_model(x, y)
            return _tag(lambda new: fitted(new), columns=[], winner="baseline_mean", inner_rmse={},
                        threshold=float("nan"), fitted=fitted)
        fold_rmse = {}
        for name, model in models.items():
            predictions = out_of_fold(model, x, y, folds)
            fold_rmse[name] = np.array([np.sqrt(np.mean((predictions[test] - y[test]) ** 2)) for _, test in folds])
        scores = {name: float(values.mean()) for name, values in fold_rmse.items()}
        winner, threshold = one_standard_error_choice(fold_rmse)
        fitted = models[winner](x, y)
        return _tag(lambda new: fitted(new), columns=getattr(fitted, "columns", []), winner=winner,
                    inner_rmse=scores, threshold=threshold, fitted=fitted)
    return fit


# --- explanation -------------------------------------------------------------------------------------------


def contributions(predict: Any, background: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """SHAP values of ``rows`` (one column per feature of ``background``; 0 where a model ignores a
    feature): TreeExplainer for trees, LinearExplainer for linear models, a permutation explainer over a
    background sample otherwise (the stacked blend)."""
    import shap

    out = pd.DataFrame(0.0, index=rows.index, columns=background.columns)
    columns = list(getattr(predict, "columns", []))
    if not columns:
        return out
    # LightGBM cannot give per-feature contributions of linear trees: those go to the permutation explainer.
    if hasattr(predict, "booster") and not hasattr(predict, "fill"):
        out[columns] = shap.TreeExplainer(predict.booster).shap_values(rows[columns])
    elif hasattr(predict, "linear"):
        transform, regressor = predict.linear[:-1], predict.linear[-1]
        explainer = shap.LinearExplainer(regressor, transform.transform(background[columns]))
        out[columns] = explainer.shap_values(transform.transform(rows[columns]))
    else:
        sample = background[columns].sample(min(len(background), 50), random_state=0)
        explainer = shap.PermutationExplainer(lambda a: predict(pd.DataFrame(a, columns=columns)), sample)
        out[columns] = explainer(rows[columns].to_numpy(), silent=True).values
    return out
