"""release: merge a finished run's adapter, export GGUF f16 / q8_0 / q4_k_m, evaluate every variant, report."""

from finetune_predictor.pipelines.release.pipeline import create_pipeline

__all__ = ["create_pipeline"]
