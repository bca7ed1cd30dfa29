"""Forecast: the large sizes of a sweep from the small ones, and how far such forecasts can be trusted."""

from finetune_predictor.pipelines.forecast.pipeline import create_pipeline

__all__ = ["create_pipeline"]
