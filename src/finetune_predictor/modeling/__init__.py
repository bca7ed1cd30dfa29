"""The model session and what runs a model: hardware, chat format, batching, training, scoring, evaluation,
checkpoints, the out-of-memory fallback, adapter artifacts and the classical baseline beside the fine-tune."""
