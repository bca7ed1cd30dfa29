"""The predictor pipeline: runs table -> evaluated, SHAP-filtered LightGBM, logged to MLflow."""

from finetune_predictor.pipelines.predictor.pipeline import create_pipeline

__all__ = ["create_pipeline"]
