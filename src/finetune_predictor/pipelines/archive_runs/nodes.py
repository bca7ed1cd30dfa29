"""Nodes of the archive_runs pipeline."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from finetune_predictor.redaction import redact
from finetune_predictor.tracking import archive


def read_store_runs(archive_runs: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The finished fine-tunes of ``archive_runs.experiment_name`` on the tracking store (the local ``mlflow.db``,
    or the server ``MLFLOW_TRACKING_URI`` names) as archive rows, and the fine-tunes refused with their reasons."""
    import mlflow

    rows, refused, other = archive.store_rows(str(archive_runs["experiment_name"]))
    return rows, {"store": redact(mlflow.get_tracking_uri()), "other_runs": other,
                  "refused_runs": [{"run_id": run_id, "reason": reason} for run_id, reason in refused]}


def append_store_runs(runs_archive: pd.DataFrame, store_rows: pd.DataFrame,
                      store_refusals: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The archive with the store's runs it does not hold yet (an archived row is never overwritten), and a
    report: how many were added, already there and refused, and why."""
    appended, report = archive.append(runs_archive, store_rows)
    refused = store_refusals["refused_runs"] + report["refused_runs"]
    report = {**report, "refused": len(refused), "refused_runs": refused, "store": store_refusals["store"],
              "other_runs": store_refusals["other_runs"], "archive_rows": len(appended),
              "tasks": dict(Counter(appended["task"])) if len(appended) else {},
              "dataset_families": dict(Counter(appended["dataset_family"])) if len(appended) else {}}
    print(_summary(report))
    return appended, report


def _summary(report: dict[str, Any]) -> str:
    filled = f", {report['filled']} filled (values added to archived rows)" if report.get("filled") else ""
    lines = [f"\nRuns archive {archive.ARCHIVE_PATH} from {report['store']}: {report['added']} added, "
             f"{report['already']} already there{filled}, {report['refused']} refused; {report['archive_rows']} rows "
             f"({len(report['tasks'])} tasks, {len(report['dataset_families'])} dataset families)."]
    for reason, count in Counter(item["reason"] for item in report["refused_runs"]).most_common():
        lines.append(f"  refused {count}: {reason}")
    if report["added"] or report.get("filled"):
        lines.append("Commit it: git add data/01_raw/runs_archive && git commit -m 'runs archive: "
                     f"+{report['added']} runs'")
    return "\n".join(lines)
