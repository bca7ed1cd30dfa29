"""Project settings: config loader, hooks and session store."""

from __future__ import annotations

import os

# kedro-telemetry (a dependency of kedro) would phone home; this project opts out here as well as in
# the `.telemetry` file at its root, so no run of it ever asks the network.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Nothing is loaded from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# The HF Trainer's MLflow callback would log clashing params into the kedro-mlflow run.
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")

from kedro.config import OmegaConfigLoader

from finetune_predictor import tracking, warning_filters
from finetune_predictor.hooks import (
    AdoptUnversionedOutputsHooks,
    MissingInputsHooks,
    ReadOwnWritesHooks,
    RedactSecretsHooks,
    RunSummaryHooks,
    SettingsCheckHooks,
)
from finetune_predictor.session_ids import use_unique_session_ids

warning_filters.install()
# Two runs of one project started in the same millisecond must not share a save version (session_ids.unique_timestamp).
use_unique_session_ids()
# MLflow's HTTP retries and time-outs bounded for every run against a tracking server (tracking.HTTP_REQUEST_DEFAULTS).
tracking.use_http_request_defaults()

from finetune_predictor.tracking.lifecycle import RunLifecycleHook  # noqa: E402  (kedro-mlflow warns on import)

# RunLifecycleHook is kedro-mlflow's MlflowHook (settings logged once at the start, interrupted runs ended
# KILLED), so the plugin's own copy is disabled; registered after the summary hooks, it runs before them
# (pluggy calls the last registered first), as the plugin did.
HOOKS = (AdoptUnversionedOutputsHooks(), ReadOwnWritesHooks(), RunSummaryHooks(), RunLifecycleHook(),
         SettingsCheckHooks(), MissingInputsHooks(), RedactSecretsHooks())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/local overrides single keys of conf/base instead of replacing a whole parameter group; with
    # the default destructive merge, a conf/local parameters file also made `--params data.x=1` drop the
    # rest of `data` (measured with kedro 1.7).
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
        "meta_dataset": ["meta_dataset*"],  # conf/meta_dataset/meta_dataset.yml: the study's chunks
    },
    # conf/base/mlflow.yml's ${tracking_uri_or:...}: MLFLOW_TRACKING_URI when set. Kedro's oc.env would read any
    # variable (a token) into any config file; this reads that one.
    "custom_resolvers": {"tracking_uri_or": tracking.tracking_uri_or},
}
