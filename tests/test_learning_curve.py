"""Learning curves: the fit recovers a known curve, intervals cover runs drawn around it, the forward-in-size
check compares with both baselines, and the forecast pipeline runs under Kedro's SequentialRunner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.pipelines.forecast import create_pipeline
from finetune_predictor.prediction.learning_curve import (
    bounded_score_se,
    choose_family,
    curves_of,
    fit_curve,
    forecast,
    forward_in_size,
    forward_metrics,
    seed_spread,
    shape_spread,
)

SIZES = [32, 64, 128, 256, 512]


def _truth(n):
    return 0.9 - 1.2 * np.asarray(n, dtype=float) ** -0.5


def _runs(config: int, sd: float, rng: np.random.Generator, sizes=SIZES, seeds=(1, 2, 3)) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": f"{config}-{n}-{s}", "task": "qa", "model": "m", "dataset_family": "f",
                          "param_learning_rate": str(config), "param_train_size": str(n),
                          "finetuned_primary": float(_truth(n) + 0.01 * config + rng.normal(0, sd))}
                         for n in sizes for s in seeds])


def test_fit_recovers_a_known_power_law():
    curve = fit_curve(SIZES, _truth(SIZES), "pow3")
    assert curve.params[0] == pytest.approx(0.9, abs=1e-3) and curve.params[2] == pytest.approx(0.5, abs=0.05)
    assert fit_curve(SIZES, _truth(SIZES), "pow2").predict([4096])[0] == pytest.approx(_truth(4096), abs=1e-6)
    # The asymptote never exceeds 1, nor falls below the floor.
    assert fit_curve([10, 20], [0.99, 1.0], "pow3").params[0] <= 1.0
    assert fit_curve([10, 20], [0.40, 0.45], "pow2", floor=0.5).params[0] >= 0.5
    with pytest.raises(ValueError, match="two sizes or more"):
        fit_curve([10, 10], [0.5, 0.6])


def test_baselines_by_hand():
    assert fit_curve([1, 2, 2], [0.2, 0.5, 0.7], "carry_forward").predict([8])[0] == pytest.approx(0.6)
    line = fit_curve([np.e, np.e ** 2], [0.5, 0.6], "loglinear")
    assert line.predict([np.e ** 3])[0] == pytest.approx(0.7)


def test_interval_covers_new_runs_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    inside = []
    for trial in range(60):
        runs = _runs(0, 0.02, rng, sizes=[32, 64, 128], seeds=(1, 2))
        band = forecast(runs["param_train_size"].astype(float), runs["finetuned_primary"], [512], n_boot=50,
                        seed=trial).iloc[0]
        inside.append(band["lower"] <= _truth(512) + rng.normal(0, 0.02) <= band["upper"])
    assert np.mean(inside) >= 0.8
    assert seed_spread([1, 1, 2, 2], [0.1, 0.3, 0.5, 0.5]) == pytest.approx(np.sqrt(0.02 / 2))


def _binomial_runs(rng: np.random.Generator, sizes, seeds=(1, 2), eval_size: int = 200) -> pd.DataFrame:
    """Runs whose score is a fraction correct of ``eval_size`` test examples around the true curve: two seeds
    see the same test-set noise scale as a sweep's runs do, which two seeds alone underestimate."""
    return pd.DataFrame([{"train_size": float(n), "value": rng.binomial(eval_size, _truth(n)) / eval_size}
                         for n in sizes for _ in seeds])


def test_with_two_seeds_the_interval_still_covers_new_runs_and_is_never_narrower_than_the_evaluation_noise():
    """Two seeds underestimate the scatter (the sweep's forecasts covered 33 % of skipped runs): a run's score on
    N examples scatters by at least its standard error, so the interval is at least that wide."""
    rng = np.random.default_rng(3)
    inside = []
    for trial in range(80):
        runs = _binomial_runs(rng, [24, 50, 100])
        new_run = rng.binomial(200, _truth(400)) / 200
        band = forecast(runs["train_size"], runs["value"], [400], "pow2", n_boot=40, seed=trial,
                        eval_size=200).iloc[0]
        inside.append(band["lower"] <= new_run <= band["upper"])
    assert np.mean(inside) >= 0.8
    same = pd.DataFrame({"train_size": [24.0, 24, 50, 50], "value": [0.6, 0.6, 0.7, 0.7]})  # seeds agree exactly
    band = forecast(same["train_size"], same["value"], [50], "pow2", eval_size=200).iloc[0]
    assert band["upper"] - band["lower"] >= 2 * 1.64 * np.sqrt(0.7 * 0.3 / 200)
    assert bounded_score_se(np.array([0.5]), 100)[0] == pytest.approx(0.05)
    assert bounded_score_se(np.array([0.5]), None)[0] == 0.0


def test_shape_uncertainty_grows_with_the_distance_extrapolated():
    sizes, values = np.array([32.0, 64, 128]), _truth([32, 64, 128])
    near, far = shape_spread(sizes, values, [128, 4096], floor=0.0)
    assert near < 0.01 < far


def _curve_table(law, data: str, configs: range) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": f"{data}-{c}-{n}", "task": "qa", "model": "m", "dataset_family": data,
                          "param_learning_rate": str(c), "param_train_size": str(n),
                          "finetuned_primary": float(law(n) + 0.001 * c)} for c in configs for n in SIZES])


def test_auto_family_is_chosen_on_the_curves_of_other_data_only():
    """``auto`` picks the family by rolling-origin error on curves of *other* data: neither the curve being
    forecast nor its siblings of the same sweep (whose larger sizes a sweep forecasting it would not have yet)."""
    steep = lambda n: 0.9 - 3.0 * np.asarray(n, dtype=float) ** -1.2  # noqa: E731  (pow3 with c far from 0.5)
    table = pd.concat([_curve_table(steep, "other", range(2)), _curve_table(_truth, "mine", range(2))],
                      ignore_index=True)
    curves = curves_of(table)
    mine = next(config for config, _ in curves if config["dataset_family"] == "mine")
    other = next(config for config, _ in curves if config["dataset_family"] == "other")
    assert choose_family(curves) == "pow3"  # the steep curves dominate the pooled errors
    assert choose_family(curves, exclude=other) == "pow2"  # only "mine" (a true pow2) is left to choose on
    assert choose_family(curves, exclude=mine) == "pow3"
    assert choose_family([c for c in curves if c[0]["dataset_family"] == "mine"], exclude=mine) == "pow2"  # none
    results = forward_in_size(table, "auto", min_sizes=3, rolling=True)
    results = results[results["fitted_sizes"].str.count(",") >= 2]  # at two fitted sizes pow3 is pow2 anyway
    chosen = results.groupby("dataset_family")["family"].agg(set).to_dict()
    assert chosen == {"mine": {"pow3"}, "other": {"pow2"}}  # each chose on the other data, never on its own


def test_a_two_size_fit_never_uses_the_unidentifiable_pow3():
    band = forecast([24, 24, 50, 50], [0.55, 0.56, 0.62, 0.61], [400], "pow3", floor=0.5).iloc[0]
    assert band.equals(forecast([24, 24, 50, 50], [0.55, 0.56, 0.62, 0.61], [400], "pow2", floor=0.5).iloc[0])
    assert forward_metrics(forward_in_size(_curve_table(_truth, "d", range(1)), "pow2", min_sizes=2,
                                           rolling=True))["forward_n_held_out"] == 3  # min_sizes 2: from the third


def test_forward_in_size_beats_carry_forward_on_a_rising_curve():
    rng = np.random.default_rng(1)
    table = pd.concat([_runs(config, 0.005, rng) for config in range(3)], ignore_index=True)
    results = forward_in_size(table, "pow2", min_sizes=3)
    assert len(results) == 9 and set(results["held_out_size"]) == {512.0}
    metrics = forward_metrics(results)
    assert metrics["forward_n_held_out"] == 3
    assert metrics["forward_mae"] < metrics["baseline_carry_forward_mae"]
    assert metrics["forward_mae"] < metrics["baseline_loglinear_mae"]
    assert forward_metrics(forward_in_size(table, min_sizes=6)) == {"forward_n_held_out": 0.0}


def test_rolling_origin_holds_out_each_size_from_the_third_and_fits_only_below_it():
    rng = np.random.default_rng(1)
    table = pd.concat([_runs(config, 0.005, rng) for config in range(3)], ignore_index=True)
    sizes = sorted(float(n) for n in SIZES)
    rolling = forward_in_size(table, "pow2", min_sizes=3, rolling=True)
    assert set(rolling["held_out_size"]) == set(sizes[2:])
    for row in rolling.itertuples():
        assert max(int(s) for s in row.fitted_sizes.split(",")) < row.held_out_size  # never a size at or above it
    largest = rolling[rolling["held_out_size"] == sizes[-1]].drop(columns="fitted_sizes").reset_index(drop=True)
    assert largest.equals(forward_in_size(table, "pow2", min_sizes=3).drop(columns="fitted_sizes"))
    metrics = forward_metrics(rolling, prefix="rolling_")
    assert metrics["rolling_forward_n_held_out"] == 3 * (len(sizes) - 2) and "forward_mae" not in metrics


def test_forecast_pipeline_runs(capsys):
    rng = np.random.default_rng(2)
    table = pd.concat([_runs(config, 0.01, rng, sizes=[16, 32, 64]) for config in range(2)], ignore_index=True)
    pipeline = create_pipeline()
    catalog = DataCatalog({
        "params:forecast": MemoryDataset({"curve_family": "pow2", "interval_level": 0.9, "min_sizes": 3}),
        "params:sensitivity": MemoryDataset({"train_per_class": [16, 32, 64, 128, 256]}),
        "params:data": MemoryDataset({"task": "qa", "family": "f"}),
        "forecast.model_input.runs_table": MemoryDataset(table),
    })
    for name in pipeline.outputs():
        catalog[name] = MemoryDataset()
    pipeline = pipeline.only_nodes("forecast.evaluate_forward_in_size", "forecast.forecast_sweep_sizes")
    SequentialRunner().run(pipeline, catalog)
    metrics = catalog.load("forecast.tracking.metrics")
    assert {"forward_mae", "forward_coverage", "baseline_carry_forward_mae", "baseline_loglinear_mae",
            "forward_n_held_out", "rolling_forward_mae", "rolling_forward_coverage",
            "rolling_baseline_carry_forward_mae", "rolling_forward_mae_pow2",
            "rolling_forward_mae_pow3"} <= set(metrics)
    forecasts = catalog.load("forecast.reporting.forecasts")
    assert set(forecasts.loc[forecasts["status"] == "forecast", "size"]) == {128.0, 256.0}
    assert (forecasts["lower"].dropna() <= forecasts["value"][forecasts["lower"].notna()]).all()
    assert "Forecast for qa on f" in capsys.readouterr().out


def test_forecast_on_a_store_without_runs_is_one_user_error(store):
    from finetune_predictor.errors import UserFacingError
    from finetune_predictor.pipelines.forecast.nodes import load_runs

    with pytest.raises(UserFacingError, match="no finished run with 'finetuned_primary'") as raised:
        load_runs({"experiment_name": "finetune_predictor"})
    assert "forecast.experiment_name" in raised.value.where and "kedro run --pipeline=sensitivity" in raised.value.fix
