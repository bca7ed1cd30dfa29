"""The tracking store as the run record meets it: the MLflow client, logging to a run, and reading runs back.

Params, metrics and tags are logged through one client (params masked of credentials, a param never logged
twice with two values); a record names its run, sets its table tags and supersedes the interrupted runs it
resumed. Finished runs are read back as the predictor's :func:`runs_table`, and a FINISHED run's baseline
predictions are found again by their ``baseline_key``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from finetune_predictor.redaction import redact
from finetune_predictor.tasks import DEFAULT_TASK, TASK_TYPES
from finetune_predictor.tracking.record import (
    CONFIG_KEY_TAG,
    EXPERIMENT_NAME,
    FEATURE_PREFIX,
    REPLICATE_KEY,
    SUPERSEDED_BY,
    SUPERSEDES,
    RunRecord,
    _finite,
    dataset_label,
    run_tags,
)

logger = logging.getLogger(__name__)

# The MLflow UI's experiment kind: "custom_model_development" is its "Machine learning" (model training) kind.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
_MAX_PARAM_LENGTH = 6000


# --- logging to MLflow ----------------------------------------------------------------------------------


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def log_metrics(run_id: str, metrics: Mapping[str, Any]) -> None:
    """Finite metrics only (a NaN is a feature that could not be measured, not a value); MLflow's
    ``log_batch`` splits large batches itself."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = []
    for key, value in metrics.items():
        for item, step in value if isinstance(value, list) else [(value, 0)]:
            if _finite(item):
                entries.append(Metric(key, float(item), now, int(step)))
    _client().log_batch(run_id, metrics=entries)


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params, each value as text. A key the run already holds with the same value is left alone; one
    it holds with another value is refused here, naming the key, instead of MLflow's bare refusal. Credentials
    (a URI's password, an environment token's value) are masked first: a setting never carries one to the store."""
    from mlflow.entities import Param

    text = {key: redact(str("" if value is None else value))[:_MAX_PARAM_LENGTH] for key, value in params.items()}
    logged = _client().get_run(run_id).data.params
    clashes = {key: (logged[key], value) for key, value in text.items() if key in logged and logged[key] != value}
    if clashes:
        raise ValueError(f"Run {run_id} already holds these params with other values (logged, new): {clashes}")
    _client().log_batch(run_id, params=[Param(key, value) for key, value in text.items() if key not in logged])


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    if tags:
        _client().log_batch(run_id, tags=[RunTag(key, redact(str(value))) for key, value in tags.items()])


def log_record(run_id: str, record: RunRecord) -> None:
    """Name the run, set its table tags, and log the record's params and metrics; the interrupted runs whose
    fine-tune it resumed are tagged ``superseded_by`` it."""
    set_tags(run_id, {"mlflow.runName": record.name, **run_tags(record.configuration, record.seed)})
    log_params(run_id, record.params)
    log_metrics(run_id, record.metrics)
    mark_superseded(run_id, [old for old in str(record.provenance.get(SUPERSEDES) or "").split(",") if old])


def mark_superseded(run_id: str, old_run_ids: Sequence[str]) -> None:
    """Tag each interrupted run whose steps ``run_id`` took over (they stay KILLED or FAILED: one configuration
    never has two FINISHED runs) with ``superseded_by``; a run no longer in the store is skipped."""
    from mlflow.exceptions import MlflowException

    for old in old_run_ids:
        try:
            _client().set_tag(old, SUPERSEDED_BY, run_id)
        except MlflowException as error:
            logger.warning("The superseded run %s could not be tagged (%s)", old, error)


def run_metric(run_id: str, name: str) -> float | None:
    return _client().get_run(run_id).data.metrics.get(name)


def active_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def mark_model_training_experiment(experiment_id: str) -> None:
    """Tag the experiment as model training (MLflow's ``mlflow.experimentKind``), so the UI opens it on runs,
    params and metrics rather than its GenAI views (traces, judges, prompts)."""
    client = _client()
    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def log_dataset(run_id: str, frame: pd.DataFrame, source: str, suffix: str, context: str,
                digest: str | None = None) -> None:
    """The run's input data set as MLflow shows it (the runs table's Dataset column, the run's inputs): named
    ``<source label>_<suffix>``, its schema and row count, ``context`` (training, validation, test), and as
    digest the first 16 hex digits of the content hash the run record logs (``train_sha256``,
    ``test_sha256``), or of the frame's own content hash where the record logs none."""
    import warnings

    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    from finetune_predictor.data.records import content_sha256

    name, digest = f"{dataset_label(source)}_{suffix}", digest or content_sha256(frame)

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a plain name is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_pandas(frame, source=source, targets="output" if "output" in frame else None,
                                          name=name, digest=digest[:16])
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])]
    for attempt in range(3):
        try:
            _client().log_inputs(run_id, datasets=inputs)
            return
        except Exception as error:
            # The store's get-or-create of a data set is not atomic: two runs logging the same one (same data,
            # started together) collide on its unique key; it exists once the other has, and is linked on retry.
            text = str(error).lower()
            if attempt == 2 or not ("unique constraint" in text or "duplicate entry" in text):
                raise
            time.sleep(0.2 * (attempt + 1))


# --- the runs table: finished runs read back ------------------------------------------------------------


def _fill_task_indicators(table: pd.DataFrame) -> None:
    """``mf_task_<type>`` for runs whose features were logged before the indicators existed: the run's task
    is known, so its indicators are too (runs without any feature stay without)."""
    has_features = table[[c for c in table.columns if c.startswith(FEATURE_PREFIX)]].notna().any(axis=1)
    for name in TASK_TYPES:
        column = f"{FEATURE_PREFIX}task_{name}"
        known = (table["task"] == name).astype(float).where(has_features)
        table[column] = table[column].fillna(known) if column in table else known


def _one_run_per_configuration_key(runs: pd.DataFrame) -> pd.DataFrame:
    """Of FINISHED sweep runs sharing a ``sweep_config_key`` (the same configuration and seed: two machines'
    sweeps claimed it within milliseconds, see :func:`refuse_if_claimed_first`), the last to finish, as
    :func:`finished_run` picks it; counting both would weigh one configuration twice."""
    column = f"tags.{CONFIG_KEY_TAG}"
    if column not in runs:
        return runs
    keyed = runs[column].notna()
    latest = runs[keyed].sort_values("end_time", kind="stable").drop_duplicates(column, keep="last")
    if keyed.sum() > len(latest):
        logger.warning("%d duplicate FINISHED run(s) of a configuration key left out of the runs table (the last to "
                       "finish of each key is kept)", int(keyed.sum() - len(latest)))
    return pd.concat([runs[~keyed], latest]).sort_index()


def runs_table(experiment_name: str = EXPERIMENT_NAME) -> pd.DataFrame:
    """FINISHED fine-tune runs (with a fine-tuned primary metric), one row each: metrics, the configuration's
    params, ``task``, ``dataset_family``, ``model`` and ``replicate_key``, as the run record logged them.
    Classification runs logged before the primary metric existed take their accuracy as ``*_primary``."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"MLflow experiment {experiment_name!r} does not exist at {redact(mlflow.get_tracking_uri())}")
    return runs_table_of(mlflow.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'"))


def runs_table_of(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`runs_table` of runs already searched (``mlflow.search_runs``'s frame, FINISHED runs only)."""
    runs = runs.copy()
    for side in ("baseline", "finetuned", "validation", "classical"):
        primary, accuracy = f"metrics.{side}_primary", f"metrics.{side}_accuracy"
        if accuracy in runs:
            runs[primary] = runs[primary].fillna(runs[accuracy]) if primary in runs else runs[accuracy]
    if runs.empty or "metrics.finetuned_primary" not in runs:
        return pd.DataFrame()
    runs = _one_run_per_configuration_key(runs[runs["metrics.finetuned_primary"].notna()]).reset_index(drop=True)
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]]
    params = runs[[c for c in runs.columns if c.startswith("params.")]]
    table = pd.concat([runs[["run_id"]], metrics.rename(columns=lambda c: c.removeprefix("metrics.")),
                       params.rename(columns=lambda c: "param_" + c.removeprefix("params."))], axis=1)
    table["dataset"] = table.get("param_dataset")
    table["model"] = table.get("param_model_name")
    table["task"] = table["param_task"].fillna(DEFAULT_TASK) if "param_task" in table else DEFAULT_TASK
    _fill_task_indicators(table)
    table["dataset_family"] = table.get("param_dataset_family")
    table[REPLICATE_KEY] = table.get(f"param_{REPLICATE_KEY}")
    unkeyed = table[REPLICATE_KEY].isna() if REPLICATE_KEY in table else pd.Series(True, index=table.index)
    if unkeyed.any():
        logger.warning("%d runs predate the run record's replicate_key / dataset_family: each counts as its own "
                       "configuration and family", int(unkeyed.sum()))
        table.loc[unkeyed, REPLICATE_KEY] = table.loc[unkeyed, "run_id"]
        table["dataset_family"] = table["dataset_family"].fillna(table["dataset"])
    return table


# --- reusing a baseline: the base model's predictions of an earlier run with the same key --------------------

BASELINE_KEY = "baseline_key"
BASELINE_REUSED = "baseline_reused"
BASELINE_SOURCE = "baseline_source_run_id"
BASELINE_ARTIFACT = "predictions/baseline_predictions.jsonl"


def finished_baseline_run(key: str) -> Any | None:
    """The latest FINISHED run of any experiment on this tracking store whose record has the param
    ``baseline_key = key``. The param is logged with the run record at the end of a run, so a run that
    failed, or stopped before its record, is never a source."""
    client = _client()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, filter_string=f"params.{BASELINE_KEY} = '{key}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.end_time DESC"], max_results=5)
    return runs[0] if runs else None


def load_baseline_predictions(run: Any) -> tuple[pd.DataFrame, str] | None:
    """The baseline predictions artifact of ``run`` and the run that computed them (a run that reused its
    baseline names its own source); None when the artifact is gone or unreadable."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=BASELINE_ARTIFACT)
        frame = pd.read_json(local, orient="records", lines=True, dtype=False)
    except Exception as error:  # a deleted artifact or an unreachable store: compute the baseline again
        logger.warning("Run %s has baseline_key but its baseline predictions could not be read (%s): the baseline "
                       "is computed again", run.info.run_id, error)
        return None
    source = run.data.params.get(BASELINE_SOURCE) or run.info.run_id
    return frame, source
