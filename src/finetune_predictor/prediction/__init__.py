"""Meta-features, the outcome predictor, model selection, learning curves and the meta-dataset study."""
