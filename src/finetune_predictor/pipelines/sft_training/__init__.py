"""SFT training: a LoRA/QLoRA adapter of the base model on the training subset."""

from finetune_predictor.pipelines.sft_training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
