"""The project's pipelines.

Dataset names follow ``{pipeline}.{layer}.{name}`` (as in large Kedro projects such as everycure's
matrix); see ``finetune_predictor.warning_filters`` for why Kedro's warning about dots is silenced.
"""

from finetune_predictor import warning_filters

warning_filters.install()
