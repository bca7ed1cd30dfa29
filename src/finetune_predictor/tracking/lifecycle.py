"""The life of a ``kedro run``'s MLflow run: what it logs when it starts, and how it ends when interrupted.

:class:`RunLifecycleHook` is kedro-mlflow's ``MlflowHook`` (which opens and closes the run; the plugin's
own copy is disabled in ``settings.py``) with these changes:

- **Settings at the start, each once.** kedro-mlflow logs every ``params:`` input of every node as it runs,
  flattened: the whole model registry (every model's entry) and, beside the run record, each setting a
  second time under another name. Here the settings the pipeline reads are logged once when the run
  starts (:func:`tracking.settings_params`): the resolved registry entry of the model used only, and the
  run record's names for what the record logs. An interrupted run keeps its settings.
- **Data when it exists.** The train, test and validation sets are logged as MLflow dataset inputs as
  soon as they are saved (digest = the run record's content hash), and the split's params and table tags
  (``n``, ``family``) with them.
- **Interrupted runs end KILLED.** SIGINT and SIGTERM end the run (and any nested run open in this
  process) as KILLED with the reason, then stop the process as the signal would (``KeyboardInterrupt``,
  exit status 128 + signal). At start, RUNNING runs of this experiment whose process is gone are marked
  FAILED (:func:`tracking.mark_stale_runs_failed`).
- The ``runner`` tag is the runner's class name, not an object repr; the experiment is tagged as a model
  training experiment.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from finetune_predictor import tracking
from finetune_predictor.redaction import redact
from finetune_predictor.settings_schema import TrainingSettings

logger = logging.getLogger(__name__)

RUN_RECORD = "evaluation.tracking.run_record"
SPLIT_SUMMARIES = ("data_engineering.reporting.split_summary", "sensitivity.reporting.split_summary")
# Catalogued data sets a run is given: (split summary that describes it, name suffix, MLflow context, the
# summary's content hash that is its digest; None = hashed here with the same function).
DATA_INPUTS = {
    "data_engineering.prm.train_set": (SPLIT_SUMMARIES[0], "train", "training", "train_sha256"),
    "data_engineering.prm.test_set": (SPLIT_SUMMARIES[0], "test", "test", "test_sha256"),
    "sensitivity.prm.train_subsets": (SPLIT_SUMMARIES[1], "train_subsets", "training", None),
    "sensitivity.prm.test_set": (SPLIT_SUMMARIES[1], "test", "test", "test_sha256"),
    "sensitivity.prm.validation_set": (SPLIT_SUMMARIES[1], "validation", "validation", "validation_sha256"),
}
_OBJECT_REPR = re.compile(r"^<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>$")


def readable_run_params(run_params: dict[str, Any]) -> dict[str, Any]:
    """Kedro passes the runner as ``str(runner)`` (``<kedro.runner.SequentialRunner object at 0x…>``, or
    ``None`` for its default): its class name is what the ``runner`` tag should say."""
    runner = run_params.get("runner")
    if runner in (None, "None"):
        return {**run_params, "runner": "SequentialRunner"}  # what KedroSession.run uses when given none
    match = _OBJECT_REPR.match(runner) if isinstance(runner, str) else None
    return {**run_params, "runner": match.group(1)} if match else dict(run_params)


def pipeline_settings(pipeline: Any, catalog: Any) -> dict[str, Any]:
    """The parameters the pipeline's nodes read, as one nested dict (``params:training.precision`` lands
    under ``training``)."""
    settings: dict[str, Any] = {}
    for name in sorted(n for n in pipeline.inputs() if n.startswith("params:")):
        *parents, leaf = name.removeprefix("params:").split(".")
        target = settings
        for key in parents:
            target = target.setdefault(key, {})
        if isinstance(target, dict) and leaf not in target:
            target[leaf] = catalog.load(name)
    return settings


class RunLifecycleHook(MlflowHook):
    """kedro-mlflow's hook, logging settings once at the start and ending interrupted runs KILLED."""

    def __init__(self) -> None:
        super().__init__()
        self._previous_handlers: dict[int, Any] = {}
        self._summaries: dict[str, Any] = {}
        self._pending: dict[str, Any] = {}
        self._record_settings: dict[str, Any] | None = None  # the settings of a run that will log a record

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """kedro-mlflow opens the tracking store here and creates the experiment: under a machine-wide lock
        (:func:`tracking.store_setup_lock`), so two runs starting at once neither both create a new SQLite store's
        tables (one failed with ``duplicate column name: step``) nor both create the experiment."""
        # A server that does not answer is one block (tracking.TrackingServerUnavailableError), not a traceback.
        with tracking.store_setup_lock(), tracking.tracking_server_errors("opening the run's tracking store"):
            super().after_context_created(context)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self.run_id = None
        self._summaries, self._pending, self._record_settings = {}, {}, None
        # kedro-mlflow tags the run with these as typed (``runtime_params``): a password in a setting is masked.
        super().before_pipeline_run(redact(readable_run_params(run_params)), pipeline, catalog)
        if not self._is_mlflow_enabled or self.run_id is None:
            return
        import mlflow

        experiment_id = mlflow.get_run(self.run_id).info.experiment_id
        tracking.mark_model_training_experiment(experiment_id)
        tracking.mark_stale_runs_failed(experiment_id, current_run_id=self.run_id)
        self._log_start(pipeline, catalog)
        self._install_signal_handlers()

    def _log_start(self, pipeline: Any, catalog: Any) -> None:
        """Process tags, the settings (each once) and the table tags the settings already fix."""
        tracking.set_tags(self.run_id, tracking.process_tags())
        settings = pipeline_settings(pipeline, catalog)
        with_record = (RUN_RECORD in pipeline.all_outputs()
                       and {"params:model", "params:training", "params:data"} <= pipeline.inputs())
        try:
            params = tracking.settings_params(settings, with_record)
        except (ValueError, TypeError) as error:  # a bad setting: preflight reports it, with its name
            logger.debug("Settings logged by their paths only (%s)", error)
            params, with_record = tracking.settings_params(settings, False), False
        tracking.log_params(self.run_id, params)
        if with_record:
            tracking.set_tags(self.run_id, tracking.run_tags(params, int(params["seed"])))
            self._record_settings = settings

    @hook_impl
    def before_node_run(self, node: Any, catalog: Any, inputs: dict[str, Any], is_async: bool) -> None:
        """kedro-mlflow reopens its run before every node (MLflow's active run is per thread) and logs the
        node's params. The settings were logged once at the start; the run is reopened only in a thread where
        it is not the active run: reopening it where it is pushed one more copy on MLflow's run stack per
        node, and in-process the finished run then stayed "active" after ``kedro run``."""
        import mlflow

        if self.run_id is None:
            return
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            mlflow.start_run(run_id=self.run_id, nested=self.mlflow_config.tracking.run.nested)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        """Log each data set the run is given as an MLflow input once its split summary (source, hash) is
        saved too, whichever comes first; with mini_test100's summary, the split's params and table tags."""
        if not self._is_mlflow_enabled or self.run_id is None:
            return
        if dataset_name in DATA_INPUTS:
            summary = self._summaries.get(DATA_INPUTS[dataset_name][0])
            if summary is None:
                self._pending[dataset_name] = data
            else:
                self._log_data(dataset_name, data, summary)
        elif dataset_name in SPLIT_SUMMARIES:
            self._summaries[dataset_name] = data
            if dataset_name == SPLIT_SUMMARIES[0]:
                self._log_split(data)
            for name in [name for name in self._pending if DATA_INPUTS[name][0] == dataset_name]:
                self._log_data(name, self._pending.pop(name), data)

    def _log_split(self, summary: dict[str, Any]) -> None:
        """The split's params and tags; with a run record to come, the run's name in the record's format
        already (an interrupted run is then not just "mini_test100" in the runs table)."""
        split = tracking.split_configuration(summary)
        tracking.log_params(self.run_id, {**split, "train_sha256": summary["train_sha256"]})
        tags = tracking.run_tags(split, None)
        if self._record_settings is not None:
            settings = self._record_settings
            tags["mlflow.runName"] = tracking.run_name(
                str(settings["model"]["name"]), str(summary["source"]), int(summary["train_size"]),
                TrainingSettings.from_params(dict(settings["training"])))
        tracking.set_tags(self.run_id, tags)

    def _log_data(self, name: str, frame: Any, summary: dict[str, Any]) -> None:
        _summary, suffix, context, hash_key = DATA_INPUTS[name]
        source = str(summary.get("source") or name)
        if suffix == "test" and not str(summary.get("test_source", "")).startswith("held-out split"):
            source = str(summary.get("test_source") or source)
        tracking.log_dataset(self.run_id, frame, source, suffix, context, summary.get(hash_key) if hash_key else None)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self._restore_signal_handlers()
        super().after_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self._restore_signal_handlers()
        try:
            if self._is_mlflow_enabled and self.run_id is not None:
                tracking.set_tags(self.run_id, {"run_failure": f"{type(error).__name__}: {error}"[:5000]})
            super().on_pipeline_error(error, run_params, pipeline, catalog)
        except Exception as hook_error:
            # The tracking server gone: its error must not replace the run's own (the one the user reads). The
            # run stays RUNNING there, and the next start on this host marks it FAILED (mark_stale_runs_failed).
            if not tracking.server_unreachable(hook_error):
                raise
            tracking.abandon_run(self.run_id)
            # Where the run's own error is the lost server, its message already says so: one message, not two.
            log = logger.info if tracking.server_unreachable(error) else logger.warning
            log("The MLflow run %s is left RUNNING: the tracking server could not be reached to end it FAILED "
                "(the next start on this host marks it FAILED)", self.run_id)

    # --- signals ---------------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, self.on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_signal(self, signum: int, frame: Any) -> None:
        """End this process's open runs KILLED, then stop as the signal asks: SIGINT raises
        ``KeyboardInterrupt``, SIGTERM exits with status 128 + 15 (both run ``finally`` blocks on the way)."""
        name = signal.Signals(signum).name
        logger.warning("%s received: the MLflow run %s is ended KILLED", name, self.run_id)
        self._restore_signal_handlers()  # a second Ctrl-C stops at once
        try:
            tracking.end_runs_killed([self.run_id], f"interrupted by {name}")
        except Exception as error:  # the store unreachable mid-write: stop anyway; the next start marks it
            logger.error("The MLflow run %s could not be ended KILLED (%s)", self.run_id, error)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
