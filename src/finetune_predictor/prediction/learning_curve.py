"""Learning-curve forecasts: the primary metric of one configuration as a bounded saturating function of the
training size, fitted on the sizes already run (every seed), with an interval, and judged by holding out the
largest size of every finished sweep (forward in size) beside two baselines.

Families (``curve_family``): ``pow3``, ``y = a - b * n^(-c)`` with ``a`` in [floor, 1], ``b >= 0`` and ``c`` in
[0.05, 2] (fitted on a grid of ``c``, linear in ``a, b`` for each); ``pow2``, the same with ``c = 0.5`` fixed
(two free parameters, for curves with two or three sizes); ``auto``, the saturating family with the lower
rolling-origin error on the store's *other* curves (:func:`choose_family`: measured, never on the curve being
forecast). Baselines: ``carry_forward`` (the last size's mean) and ``loglinear`` (a straight line in log size).

The interval of a new run at a size has three independent normal parts: the fit's uncertainty (a bootstrap
over the runs at each fitted size), the scatter of one run around the curve (the pooled seed spread, but at
least the standard error of a mean of ``eval_size`` scores in [0, 1], since two seeds underestimate it), and
the uncertainty of the curve's shape (the spread of the pow2, pow3 and log-linear forecasts at that size,
which grows with the distance extrapolated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

FAMILIES = ("pow3", "pow2")
BASELINES = ("carry_forward", "loglinear")
SHAPES = ("pow2", "pow3", "loglinear")  # the curve shapes whose disagreement is the shape uncertainty
AUTO = "auto"
# Where the number of examples each target metric is a mean over is recorded (the interval's scatter floor): the
# MLflow runs table's column, then the sweep's result rows'.
EVAL_SIZE_COLUMNS = {"finetuned_primary": ("finetuned_n", "param_test_size", "test_size"),
                     "validation_primary": ("validation_n",)}
_C_GRID = np.linspace(0.05, 2.0, 40)
# Configuration params that say which curve a run belongs to (everything but its size and seed).
CURVE_KEYS = ("task", "model", "dataset_family", "param_test_sha256", "param_learning_rate", "param_lora_r",
              "param_lora_alpha", "param_lora_dropout", "param_num_train_epochs", "param_max_steps",
              "param_effective_batch_size", "param_max_length", "param_precision", "param_data_variant",
              "param_label_noise", "param_duplicate_rate", "param_positive_share")


@dataclass(frozen=True)
class Curve:
    """A fitted curve: ``predict(n)`` in the metric's units."""

    family: str
    params: tuple[float, ...]

    def predict(self, sizes: Sequence[float] | np.ndarray) -> np.ndarray:
        n = np.asarray(sizes, dtype=float)
        if self.family == "carry_forward":
            return np.full_like(n, self.params[0])
        if self.family == "loglinear":
            return np.clip(self.params[0] + self.params[1] * np.log(n), 0.0, 1.0)
        a, b, c = self.params
        return a - b * n ** (-c)


def _fit_power(sizes: np.ndarray, values: np.ndarray, exponents: np.ndarray, floor: float) -> Curve:
    """Least squares of ``a - b n^-c`` for each ``c``; ``a`` kept in [floor, 1] and ``b`` >= 0."""
    best: tuple[float, Curve] | None = None
    for c in exponents:
        x = sizes ** (-c)
        design = np.column_stack([np.ones_like(x), -x])
        (a, b), *_ = np.linalg.lstsq(design, values, rcond=None)
        if b < 0:  # a decreasing fit: the flat curve at the mean is the closest admissible one
            a, b = float(values.mean()), 0.0
        a = float(np.clip(a, floor, 1.0))
        b = float(max(0.0, np.dot(x, a - values) / max(np.dot(x, x), 1e-12)))  # refit b with a clipped
        error = float(np.sum((a - b * x - values) ** 2))
        if best is None or error < best[0] - 1e-12:
            best = (error, Curve("pow3", (a, b, float(c))))
    assert best is not None
    return best[1]


def fit_curve(sizes: Sequence[float], values: Sequence[float], family: str = "pow2", floor: float = 0.0) -> Curve:
    """The curve of ``family`` (or a baseline) through runs at ``sizes`` (one value per run)."""
    n, y = np.asarray(sizes, dtype=float), np.asarray(values, dtype=float)
    if len(np.unique(n)) < 2 and family != "carry_forward":
        raise ValueError(f"a {family} curve needs runs at two sizes or more, got sizes {sorted(set(n.tolist()))}")
    if family == "carry_forward":
        largest = n.max()
        return Curve(family, (float(y[n == largest].mean()),))
    if family == "loglinear":
        slope, intercept = np.polyfit(np.log(n), y, 1)
        return Curve(family, (float(intercept), float(slope)))
    if family not in FAMILIES:
        raise ValueError(f"forecast.curve_family must be one of {FAMILIES + BASELINES}, got {family!r}")
    curve = _fit_power(n, y, _C_GRID if family == "pow3" else np.array([0.5]), floor)
    return Curve(family, curve.params)


def seed_spread(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Pooled standard deviation of runs at the same size (0 when no size has two runs)."""
    frame = pd.DataFrame({"n": sizes, "y": values})
    groups = [g["y"].to_numpy() for _, g in frame.groupby("n") if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    return float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)) if dof else 0.0


def bounded_score_se(value: np.ndarray, eval_size: float | None) -> np.ndarray:
    """Standard error of a mean of ``eval_size`` per-example scores in [0, 1] whose mean is ``value``: at most
    sqrt(p (1 - p) / N), the binomial one (0 when the size is unknown)."""
    if not eval_size or not np.isfinite(eval_size):
        return np.zeros_like(value)
    p = np.clip(value, 0.0, 1.0)
    return np.sqrt(p * (1 - p) / float(eval_size))


def identifiable(family: str, n_sizes: int) -> str:
    """The family a fit at ``n_sizes`` sizes can pin down: pow3 has three parameters, so at two sizes its exponent
    is arbitrary and pow2 is fitted instead."""
    return "pow2" if family == "pow3" and n_sizes < 3 else family


def shape_spread(sizes: np.ndarray, values: np.ndarray, targets: Sequence[float], floor: float) -> np.ndarray:
    """Standard deviation of the :data:`SHAPES` forecasts at ``targets`` (pow3 only where it is identifiable,
    log-linear clipped at the floor like the others): how much the answer depends on the curve's assumed shape,
    near zero inside the fitted sizes and growing with the distance extrapolated."""
    n_sizes = len(np.unique(sizes))
    shapes = dict.fromkeys(identifiable(shape, n_sizes) for shape in SHAPES)
    predictions = [np.maximum(fit_curve(sizes, values, shape, floor).predict(targets), floor) for shape in shapes]
    return np.std(np.asarray(predictions), axis=0, ddof=1)


def forecast(sizes: Sequence[float], values: Sequence[float], targets: Sequence[float], family: str = "pow2",
             floor: float = 0.0, level: float = 0.9, n_boot: int = 200, seed: int = 0,
             min_spread: float = 0.02, eval_size: float | None = None) -> pd.DataFrame:
    """Forecast a new run's metric at each target size: point (the fit on all runs), lower and upper.

    The interval combines the fit's uncertainty (bootstrap: runs resampled within each size), the scatter of one
    run around the curve (the pooled seed spread, at least ``min_spread`` and at least
    :func:`bounded_score_se` of ``eval_size`` examples) and the shape uncertainty (:func:`shape_spread`), as
    independent normal parts."""
    n, y = np.asarray(sizes, dtype=float), np.asarray(values, dtype=float)
    family = identifiable(family, len(np.unique(n)))
    points = fit_curve(n, y, family, floor).predict(targets)
    rng = np.random.default_rng(seed)
    by_size = [np.flatnonzero(n == size) for size in np.unique(n)]
    draws = []
    for _ in range(n_boot):
        index = np.concatenate([rng.choice(rows, size=len(rows)) for rows in by_size])
        draws.append(fit_curve(n[index], y[index], family, floor).predict(targets))
    z = norm.ppf(0.5 + level / 2)
    fit_sd = np.std(np.asarray(draws), axis=0)
    scatter = np.maximum(max(seed_spread(n, y), min_spread), bounded_score_se(points, eval_size))
    half = z * np.sqrt(fit_sd ** 2 + scatter ** 2 + shape_spread(n, y, targets, floor) ** 2)
    return pd.DataFrame({"size": np.asarray(targets, dtype=float), "predicted": points,
                         "lower": np.clip(points - half, 0.0, 1.0), "upper": np.clip(points + half, 0.0, 1.0)})


def eval_size_of(runs: pd.DataFrame, target: str) -> float | None:
    """The number of examples ``target`` is a mean over, from the runs table (median over runs), if recorded."""
    for column in EVAL_SIZE_COLUMNS.get(target, ()):
        size = pd.to_numeric(runs[column], errors="coerce").median() if column in runs else float("nan")
        if np.isfinite(size):
            return float(size)
    return None


def chance_floor(task: str | None) -> float:
    """The lowest the asymptote may be: chance for a balanced binary task, else 0."""
    return 0.5 if task == "binary_classification" else 0.0


def curves_of(table: pd.DataFrame, target: str = "finetuned_primary") -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """The runs table cut into curves: (the configuration, its runs' ``train_size`` and target)."""
    keys = [key for key in CURVE_KEYS if key in table]
    size = "train_size" if "train_size" in table else "param_train_size"  # MLflow's runs table has the param
    runs = table[table[target].notna() & table[size].notna()].copy()
    runs["train_size"] = runs[size].astype(float)
    out = []
    for values, group in runs.groupby(keys, dropna=False):
        config = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        curve = group[["run_id", "train_size", target]].rename(columns={target: "value"})
        out.append((config, curve.assign(eval_size=eval_size_of(group, target))))
    return out


def rolling_point_errors(curve: pd.DataFrame, family: str, floor: float, min_sizes: int) -> list[float]:
    """Absolute errors of ``family``'s point forecasts on one curve, every size from the ``min_sizes``-th on held
    out in turn and forecast from the sizes below it (no interval: cheap enough to compare families)."""
    sizes = sorted(curve["train_size"].unique())
    errors: list[float] = []
    for held_size in sizes[first_held_out(min_sizes):]:
        fitted, held = curve[curve["train_size"] < held_size], curve[curve["train_size"] == held_size]
        fitted_family = identifiable(family, fitted["train_size"].nunique())
        point = fit_curve(fitted["train_size"], fitted["value"], fitted_family, floor).predict([held_size])[0]
        errors += np.abs(held["value"].to_numpy() - point).tolist()
    return errors


def first_held_out(min_sizes: int) -> int:
    """Index of the first size a forward check holds out: never before the third, since a forecast needs two
    fitted sizes."""
    return max(min_sizes - 1, 2)


DATA_KEYS = ("dataset_family", "param_test_sha256", "task")  # curves with these equal share their data


def same_data(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two curves were trained and scored on the same data (other learning rates of one sweep, say)."""
    return all(str(a.get(key)) == str(b.get(key)) for key in DATA_KEYS)


def choose_family(curves: list[tuple[dict[str, Any], pd.DataFrame]], min_sizes: int = 3,
                  exclude: dict[str, Any] | None = None) -> str:
    """The saturating family (:data:`FAMILIES`) with the lowest rolling-origin MAE over the ``curves`` not on the
    same data as the configuration ``exclude``: the curve to be forecast never chooses its own family, nor do
    its siblings of the same sweep, whose larger sizes a sweep forecasting this one would not have yet. ``pow2``,
    the family with fewer parameters, when no such curve has ``min_sizes`` sizes."""
    errors: dict[str, list[float]] = {family: [] for family in FAMILIES}
    for config, curve in curves:
        if (exclude is not None and same_data(config, exclude)) or curve["train_size"].nunique() < min_sizes:
            continue
        for family in FAMILIES:
            errors[family] += rolling_point_errors(curve, family, chance_floor(config.get("task")), min_sizes)
    scored = {family: float(np.mean(found)) for family, found in errors.items() if found}
    return min(scored, key=lambda family: (scored[family], family != "pow2")) if scored else "pow2"


def forward_in_size(table: pd.DataFrame, family: str = "pow2", target: str = "finetuned_primary",
                    level: float = 0.9, min_sizes: int = 3, rolling: bool = False) -> pd.DataFrame:
    """For every curve with ``min_sizes`` sizes or more: hold out the largest size, forecast it from the
    others, and compare with its runs. ``rolling``: every size from the ``min_sizes``-th on is held out in turn
    and forecast from the sizes below it only (rolling origin: more held-out points from the same curves, each
    forecast as a sweep would have made it then). ``family="auto"``: each curve's family is chosen on the curves of
    other data (:func:`choose_family`). One row per held-out run, with the curve's and the baselines' predictions."""
    rows = []
    curves = curves_of(table, target)
    for config, runs in curves:
        sizes = sorted(runs["train_size"].unique())
        if len(sizes) < max(min_sizes, 3):
            continue
        chosen = choose_family(curves, min_sizes, exclude=config) if family == AUTO else family
        for held_size in sizes[first_held_out(min_sizes):] if rolling else sizes[-1:]:
            fitted = runs[runs["train_size"] < held_size]
            held = runs[runs["train_size"] == held_size]
            rows += _held_out_rows(config, fitted, held, held_size, chosen, level)
    return pd.DataFrame(rows)


def _held_out_rows(config: dict[str, Any], fitted: pd.DataFrame, held: pd.DataFrame, held_size: float,
                   family: str, level: float) -> list[dict[str, Any]]:
    """The forecast of ``held_size`` from the ``fitted`` runs beside each baseline, one row per held-out run."""
    floor = chance_floor(config.get("task"))
    eval_size = fitted["eval_size"].iloc[0] if "eval_size" in fitted else None
    point = forecast(fitted["train_size"], fitted["value"], [held_size], family, floor, level,
                     eval_size=eval_size).iloc[0]
    baselines = {name: float(fit_curve(fitted["train_size"], fitted["value"], name).predict([held_size])[0])
                 for name in BASELINES}
    fitted_sizes = ",".join(str(int(s)) for s in sorted(fitted["train_size"].unique()))
    used = identifiable(family, fitted["train_size"].nunique())
    return [{**config, "run_id": run.run_id, "held_out_size": held_size, "fitted_sizes": fitted_sizes,
             "family": used, "actual": run.value, "predicted": point["predicted"], "lower": point["lower"],
             "upper": point["upper"], **{f"baseline_{name}": value for name, value in baselines.items()}}
            for run in held.itertuples(index=False)]


def forward_metrics(results: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """MAE in points of the forecast and of each baseline, interval coverage, and how many curves (held-out
    sizes) and runs were held out; every name starts with ``prefix`` (``rolling_`` for the rolling origin)."""
    if results.empty:
        return {f"{prefix}forward_n_held_out": 0.0}
    error = lambda column: float(100 * np.mean(np.abs(results[column] - results["actual"])))  # noqa: E731
    inside = (results["actual"] >= results["lower"]) & (results["actual"] <= results["upper"])
    curves = results.groupby(["held_out_size", "fitted_sizes", *[k for k in CURVE_KEYS if k in results]],
                             dropna=False).ngroups
    metrics = {"forward_mae": error("predicted"), "forward_coverage": float(inside.mean()),
               "baseline_carry_forward_mae": error("baseline_carry_forward"),
               "baseline_loglinear_mae": error("baseline_loglinear"),
               "forward_n_held_out": float(curves), "forward_n_runs": float(len(results))}
    return {prefix + name: value for name, value in metrics.items()}
