"""The forecast-driven sweep: which curves stop, what is skipped, and the compute it saves (no model needed:
the runs are simulated from known curves)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune_predictor.pipelines.sensitivity.grid import expand_grid
from finetune_predictor.pipelines.sensitivity.halving import (
    curve_of,
    curves_to_stop,
    planned_steps,
    run_by_forecast,
    stopping_regret,
)

SWEEP = {"train_per_class": [16, 32, 64, 128], "learning_rates": [1e-4, 1e-3], "seeds": [1, 2]}
# lr 1e-3 saturates near 0.9, lr 1e-4 near 0.6: the second is hopeless at the largest size.
CEILING = {1e-3: 0.9, 1e-4: 0.6}


def _value(config) -> float:
    noise = np.random.default_rng(config.seed * 1000 + config.train_per_class).normal(0, 0.005)
    return CEILING[config.learning_rate] - 0.8 * config.train_per_class ** -0.5 + noise


def test_a_hopeless_curve_stops_and_the_saving_is_counted():
    configs = expand_grid(SWEEP, "m")
    finished = []

    def run_level(jobs):
        finished.extend(job[0] for job in jobs)
        return [(job[0], None) for job in jobs]

    def results_so_far():
        return pd.DataFrame([{"config": c, "train_size": c.train_per_class, "finetuned_primary": _value(c)}
                             for c in finished])

    jobs = [(config,) for config in configs]
    outcomes, status = run_by_forecast(jobs, run_level, results_so_far, {}, "qa", strata=1, effective_batch=8)
    skipped = {entry["config"] for entry in status["skipped"]}
    assert skipped and all(c.learning_rate == 1e-4 for c in skipped)
    assert {c.train_per_class for c in skipped} <= {64, 128}  # two sizes must run before a forecast
    assert all(c.learning_rate == 1e-3 for c in finished if c.train_per_class == 128)
    assert len(outcomes) == len(configs) - len(skipped)
    assert status["trained_steps"] == status["planned_steps"] - sum(planned_steps(c, 1, 8) for c in skipped)
    assert all(entry["upper"] < entry["best_lower"] for entry in status["skipped"])


def test_close_curves_both_run():
    configs = expand_grid({**SWEEP, "learning_rates": [1e-3, 2e-3]}, "m")
    rows = pd.DataFrame([{"config": c, "train_size": c.train_per_class,
                          "finetuned_primary": 0.9 - 0.8 * c.train_per_class ** -0.5 + 0.01 * c.seed}
                         for c in configs if c.train_per_class <= 32])
    assert curves_to_stop(rows, configs, 128, "qa") == {}
    # Seeds and sizes of one configuration are one curve.
    assert len({curve_of(c) for c in configs}) == 2


def test_curves_stop_on_validation_never_on_the_test_set_they_report():
    """The test metric says lr 1e-4 is hopeless, the validation metric says both curves are close: with a
    validation split, the stop follows validation (stopping is a selection); without one, the test metric."""
    configs = expand_grid(SWEEP, "m")
    rows = pd.DataFrame([{"config": c, "train_size": c.train_per_class, "finetuned_primary": _value(c),
                          "validation_primary": 0.9 - 0.8 * c.train_per_class ** -0.5 + 0.001 * c.seed}
                         for c in configs if c.train_per_class <= 32])
    assert curves_to_stop(rows, configs, 128, "qa") == {}
    stopped = curves_to_stop(rows.drop(columns="validation_primary"), configs, 128, "qa")
    assert stopped and all(curve.learning_rate == 1e-4 for curve in stopped)
    assert all("finetuned_primary" in entry["reason"] for entry in stopped.values())


def _grid_rows(configs, validation=None) -> pd.DataFrame:
    return pd.DataFrame([{"config_key": f"k{i}", "train_size": c.train_per_class, "finetuned_primary": _value(c),
                          "validation_primary": (validation or _value)(c)} for i, c in enumerate(configs)])


def test_stopping_regret_is_zero_when_the_skipped_curve_would_have_lost():
    configs = expand_grid(SWEEP, "m")
    keys = {f"k{i}": c for i, c in enumerate(configs)}
    rows = _grid_rows(configs)
    skipped = {key: {"predicted": 0.55, "lower": 0.5, "upper": 0.6} for key, c in keys.items()
               if c.learning_rate == 1e-4 and c.train_per_class >= 64}
    regret = stopping_regret(rows, skipped, keys, strata=1, effective_batch=8)
    assert regret["same_choice"] and regret["regret_points"] == 0.0 and regret["oracle_regret_points"] == 0.0
    assert regret["trained_steps"] == regret["planned_steps"] - sum(planned_steps(keys[k], 1, 8) for k in skipped)
    actual = rows.set_index("config_key").loc[list(skipped), "validation_primary"]
    assert np.isclose(regret["skipped_forecast_mae_points"], 100 * np.mean(np.abs(0.55 - actual)))
    assert regret["skipped_forecast_coverage"] == np.mean((actual >= 0.5) & (actual <= 0.6))


def test_stopping_regret_counts_the_points_lost_when_the_winner_was_stopped():
    """The forecast stopped lr 1e-3 at the largest size, which then won on validation and on test by 30 points."""
    configs = expand_grid(SWEEP, "m")
    keys = {f"k{i}": c for i, c in enumerate(configs)}
    skipped = {key: {"predicted": 0.5, "lower": 0.4, "upper": 0.6} for key, c in keys.items()
               if c.learning_rate == 1e-3 and c.train_per_class == 128}
    regret = stopping_regret(_grid_rows(configs), skipped, keys, strata=1, effective_batch=8)
    assert not regret["same_choice"]
    assert 29 < regret["regret_points"] < 31 and 29 < regret["oracle_regret_points"] < 31
    # Nothing of the skipped set has run yet (a forecast-driven run itself): no regret to state.
    unfinished = _grid_rows([c for c in configs if not (c.learning_rate == 1e-3 and c.train_per_class == 128)])
    assert stopping_regret(unfinished.assign(config_key=[k for k, c in keys.items() if not (
        c.learning_rate == 1e-3 and c.train_per_class == 128)]), skipped, keys, 1, 8) is None


def test_a_forecast_run_with_everything_already_finished_says_so_instead_of_zero_of_zero_steps():
    from finetune_predictor.pipelines.sensitivity.report import _forecast_lines

    status = {"strategy": "forecast", "skipped": [], "planned_steps": 0, "trained_steps": 0}
    text = "\n".join(_forecast_lines(status))
    assert "all reused" in text and "0 of 0" not in text
    text = "\n".join(_forecast_lines({**status, "planned_steps": 100, "trained_steps": 60}))
    assert "Trained 60 of 100 planned optimizer steps (40% of the compute saved)" in text


def test_the_evaluation_size_widens_the_stopping_forecast_and_reaches_it_through_the_result_rows():
    """The interval's scatter floor comes from the evaluation set's size: the sweep's result rows carry it
    (``validation_n``, ``test_size``), and a curve that looked hopeless on 1,000 examples is kept on 50."""
    from types import SimpleNamespace

    from finetune_predictor.pipelines.sensitivity.grid import SweepConfig
    from finetune_predictor.pipelines.sensitivity.runner import result_row
    from finetune_predictor.prediction.learning_curve import eval_size_of

    configs = expand_grid({**SWEEP, "learning_rates": [1e-3, 2e-3]}, "m")
    rows = pd.DataFrame([{"config": c, "train_size": c.train_per_class, "validation_primary":
                          (0.9 if c.learning_rate == 1e-3 else 0.75) - 0.8 * c.train_per_class ** -0.5}
                         for c in configs if c.train_per_class <= 32])
    assert curves_to_stop(rows, configs, 128, "qa") != {}  # no evaluation size known: only the 2-point floor
    assert curves_to_stop(rows.assign(validation_n=1000.0), configs, 128, "qa") != {}
    assert curves_to_stop(rows.assign(validation_n=50.0), configs, 128, "qa") == {}
    run = SimpleNamespace(data=SimpleNamespace(metrics={"validation_n": 50.0, "finetuned_primary": 0.7},
                                               params={"test_size": "200", "train_size": "32"}),
                          info=SimpleNamespace(run_id="r", artifact_uri="x"))
    row = result_row(SweepConfig("m", 16, 1e-3, 8, 32, 0.1, 3, 42), "k", run)
    assert row["validation_n"] == 50.0 and row["test_size"] == 200.0
    assert eval_size_of(pd.DataFrame([row]), "validation_primary") == 50.0
    assert eval_size_of(pd.DataFrame([row]), "finetuned_primary") == 200.0
    assert eval_size_of(pd.DataFrame({"validation_n": [None, "x"]}), "validation_primary") is None
