"""The run record and its life in MLflow.

Every fine-tune (a ``mini_test100`` run or one configuration of a sweep) is described by a
:class:`RunRecord`: a name, flat params and metrics. The params come in three parts:

- ``configuration``: what defines the fine-tune apart from its seed (data, size, model, hyperparameters,
  the precision and quantization it actually ran with). Runs whose configuration hashes alike are seed
  replicates: the hash is logged as the param ``replicate_key``, and the predictor reads it back;
- ``seed``;
- provenance: where the run came from and what it produced (hashes, device, engine, truncation).

This package builds the record, logs it to a run (the active one, or a nested child it opens and ends),
finds runs by their sweep key, and reads finished runs back as the predictor's table. Its modules, each
importing only those above it:

- :mod:`~finetune_predictor.tracking.record`: the record, its configuration and provenance, run names and table
  tags, the settings logged at a run's start, and the names runs carry;
- :mod:`~finetune_predictor.tracking.server`: a tracking server over HTTP (URI, bounded retries, a server that
  stops answering) and links into its UI;
- :mod:`~finetune_predictor.tracking.store`: the MLflow client, logging params, metrics, tags, records and data
  sets, the runs table, and reusing a FINISHED run's baseline;
- :mod:`~finetune_predictor.tracking.claims`: who runs a run (process tags, child runs), stale and interrupted
  runs, and one process at a time per sweep configuration.

Its other modules are imported by name and not re-exported: the Kedro hook that opens and closes a run
(:mod:`~finetune_predictor.tracking.lifecycle`) and where a run ran (:mod:`~finetune_predictor.tracking.provenance`).

Callers use this facade (``tracking.runs_table(...)``). A test that patches a name the package itself looks up
patches it in the module that defines it (``finetune_predictor.tracking.store._client``): a patch here reaches
callers outside the package only.
"""

from __future__ import annotations

from finetune_predictor.tracking.claims import (
    CLAIMED,
    HOST_TAG,
    PID_TAG,
    ConfigurationClaimedError,
    abandon_run,
    child_run,
    configuration_claim,
    end_runs_killed,
    finished_run,
    forecast_skipped_runs,
    live_claim,
    mark_interrupted_runs_failed,
    mark_stale_runs_failed,
    process_tags,
    refuse_if_claimed_first,
    run_may_be_alive,
    runs_with_key,
    store_setup_lock,
)
from finetune_predictor.tracking.claims import _process_alive as _process_alive  # private: tests call it here
from finetune_predictor.tracking.record import (
    CLEAN_VARIANT,
    CONFIG_KEY_TAG,
    EXPERIMENT_NAME,
    FEATURE_PREFIX,
    REPLICATE_KEY,
    RESUMED_FROM_STEP,
    SKIPPED_BY_FORECAST_TAG,
    SKIPPED_CONFIG_KEY_TAG,
    SUPERSEDED_BY,
    SUPERSEDES,
    SWEEP_TAG,
    RunRecord,
    build_run_record,
    dataset_label,
    memory_provenance,
    model_provenance,
    resume_provenance,
    run_metrics,
    run_name,
    run_tags,
    settings_configuration,
    settings_params,
    split_configuration,
)
from finetune_predictor.tracking.server import (
    HTTP_REQUEST_DEFAULTS,
    TrackingServerUnavailableError,
    server_unreachable,
    tracking_server_errors,
    tracking_server_url,
    tracking_uri_or,
    ui_url,
    use_http_request_defaults,
)
from finetune_predictor.tracking.store import (
    BASELINE_ARTIFACT,
    BASELINE_KEY,
    BASELINE_REUSED,
    BASELINE_SOURCE,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    active_run_id,
    finished_baseline_run,
    load_baseline_predictions,
    log_dataset,
    log_metrics,
    log_params,
    log_record,
    mark_model_training_experiment,
    mark_superseded,
    run_metric,
    runs_table,
    runs_table_of,
    set_tags,
)
from finetune_predictor.tracking.store import _fill_task_indicators as _fill_task_indicators  # private: as above

__all__ = [
    "BASELINE_ARTIFACT",
    "BASELINE_KEY",
    "BASELINE_REUSED",
    "BASELINE_SOURCE",
    "CLAIMED",
    "CLEAN_VARIANT",
    "CONFIG_KEY_TAG",
    "EXPERIMENT_KIND_TAG",
    "EXPERIMENT_NAME",
    "FEATURE_PREFIX",
    "HOST_TAG",
    "HTTP_REQUEST_DEFAULTS",
    "MODEL_TRAINING_KIND",
    "PID_TAG",
    "REPLICATE_KEY",
    "RESUMED_FROM_STEP",
    "SKIPPED_BY_FORECAST_TAG",
    "SKIPPED_CONFIG_KEY_TAG",
    "SUPERSEDED_BY",
    "SUPERSEDES",
    "SWEEP_TAG",
    "ConfigurationClaimedError",
    "RunRecord",
    "TrackingServerUnavailableError",
    "abandon_run",
    "active_run_id",
    "build_run_record",
    "child_run",
    "configuration_claim",
    "dataset_label",
    "end_runs_killed",
    "finished_baseline_run",
    "finished_run",
    "forecast_skipped_runs",
    "live_claim",
    "load_baseline_predictions",
    "log_dataset",
    "log_metrics",
    "log_params",
    "log_record",
    "mark_interrupted_runs_failed",
    "mark_model_training_experiment",
    "mark_stale_runs_failed",
    "mark_superseded",
    "memory_provenance",
    "model_provenance",
    "process_tags",
    "refuse_if_claimed_first",
    "resume_provenance",
    "run_may_be_alive",
    "run_metric",
    "run_metrics",
    "run_name",
    "run_tags",
    "runs_table",
    "runs_table_of",
    "runs_with_key",
    "server_unreachable",
    "set_tags",
    "settings_configuration",
    "settings_params",
    "split_configuration",
    "store_setup_lock",
    "tracking_server_errors",
    "tracking_server_url",
    "tracking_uri_or",
    "ui_url",
    "use_http_request_defaults",
]
