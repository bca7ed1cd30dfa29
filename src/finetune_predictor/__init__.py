"""finetune-predictor: tell how an LLM fine-tune will turn out before paying for it."""

__version__ = "0.1.0"
