"""The product's order of candidate training sets: the no-fitting prior and the predictor's forecast.

Every candidate study measured so far ranked better by the prior
(:data:`finetune_predictor.tasks.base.RANKING_PRIOR_FEATURE`) than by a forecast fitted on other runs
(docs/predictor.md), so by default the prior leads and the forecast breaks its ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _forecast_ties(predicted: Sequence[float]) -> pd.Series:
    """Forecasts rounded so that values equal to 1e-6 points compare equal (the mean's are identical)."""
    return pd.Series(np.asarray(predicted, dtype=float)).round(8)


def forecasts_tell_apart(predicted: Sequence[float]) -> bool:
    """Whether the forecasts order the candidates at all (False: every one ties, as under the mean)."""
    return bool(_forecast_ties(predicted).nunique() > 1)


RANK_ORDERS = ("auto", "predictor")


def forecast_leads(predicted: Sequence[float], prior: Sequence[float] | None, order_by: str) -> bool:
    """Whether :func:`ranking_scores` orders by the forecast rather than the prior: only where the forecasts tell
    the candidates apart and either ``order_by`` is ``predictor`` or the task has no prior. Every candidate study
    measured so far ranked better by the prior than by a forecast fitted on other runs (docs/predictor.md,
    'Ranking candidates')."""
    has_prior = prior is not None and bool(np.isfinite(np.asarray(prior, dtype=float)).any())
    return forecasts_tell_apart(predicted) and (order_by == "predictor" or not has_prior)


def ranking_scores(predicted: Sequence[float], prior: Sequence[float] | None, order_by: str = "auto") -> np.ndarray:
    """The product's order of candidate training sets as one score each (higher ranks first; NaN where a
    candidate is unranked). ``auto``: by the no-fitting prior
    (:data:`finetune_predictor.tasks.base.RANKING_PRIOR_FEATURE`), ties broken by the predictor's forecast, on
    tasks that have the prior; by the forecast on tasks without it. ``predictor``: by the forecast, ties broken by
    the prior. With no forecast (no saved predictor, or one that ships its runs table's mean) the prior alone
    ranks, rather than the order the files were listed in."""
    if order_by not in RANK_ORDERS:
        raise ValueError(f"rank.order_by must be one of {RANK_ORDERS}, not {order_by!r}")
    forecast = _forecast_ties(predicted)
    learnability = pd.Series(np.asarray(prior, dtype=float)) if prior is not None else None
    by_forecast = learnability is None or learnability.isna().all() or forecast_leads(predicted, prior, order_by)
    primary, secondary = (forecast, learnability) if by_forecast else (learnability, forecast)
    tie_break = secondary.rank(method="dense").fillna(0.0) if secondary is not None else 0.0
    scores = primary.rank(method="dense") * (len(primary) + 1) + tie_break
    return scores.to_numpy(dtype=float)
