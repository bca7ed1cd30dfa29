"""archive_runs: append the tracking store's finished fine-tunes to the committed runs archive."""

from finetune_predictor.pipelines.archive_runs.pipeline import create_pipeline

__all__ = ["create_pipeline"]
