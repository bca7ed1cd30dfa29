"""Nodes of the preflight pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from finetune_predictor.preflight import FAIL, PreflightError, format_verdict, run_checks

logger = logging.getLogger(__name__)


def check_run(data: dict[str, Any], model: dict[str, Any], model_registry: dict[str, Any],
              training: dict[str, Any], preflight: dict[str, Any], parameters: dict[str, Any]) -> pd.DataFrame:
    """The verdict table for this run's settings (``parameters``: every group, checked first), data, model,
    folders, disk and memory."""
    return run_checks(data, model, model_registry, training, preflight, parameters)


def enforce_verdict(verdict: pd.DataFrame) -> bool:
    """Print the verdict once; stop the run (non-zero exit, no traceback) when any check failed."""
    print(format_verdict(verdict))
    failed = verdict.loc[verdict["status"] == FAIL, "name"].tolist()
    if failed:
        raise PreflightError(failed)
    return True
