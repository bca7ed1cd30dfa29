"""The project's pipelines.

Dataset names follow ``{pipeline}.{layer}.{name}`` (as in large Kedro projects such as everycure's
matrix), which Kedro >= 1.x flags with a one-time UserWarning because dots can also mean namespaces.
The names are deliberate and none of these pipelines is namespaced, so that warning is silenced here.
"""

import warnings

warnings.filterwarnings("ignore", message="One or more dataset names contain '.' characters")
