"""The forecast-driven sweep: which curves stop, what is skipped, and the compute it saves (no model needed:
the runs are simulated from known curves)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune_predictor.pipelines.sensitivity.grid import expand_grid
from finetune_predictor.pipelines.sensitivity.halving import curve_of, curves_to_stop, planned_steps, run_by_forecast

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
