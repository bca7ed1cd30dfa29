"""The archive_runs pipeline: read the store's finished fine-tunes, append the new ones to the archive."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from finetune_predictor.pipelines.archive_runs import nodes

ARCHIVE = "archive_runs.raw.runs_archive"


def create_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline([
        node(nodes.read_store_runs, "params:archive_runs",
             ["archive_runs.int.store_rows", "archive_runs.int.store_refusals"], name="read_store_runs"),
        node(nodes.append_store_runs, [ARCHIVE, "archive_runs.int.store_rows", "archive_runs.int.store_refusals"],
             ["archive_runs.raw.runs_archive_appended", "archive_runs.reporting.archive_report"],
             name="append_store_runs"),
    ], namespace="archive_runs", prefix_datasets_with_namespace=False)
