"""Hooks: settings checked before a pipeline without a preflight starts; read back this run's own versions; at
the end of a run, its result first (the evaluation headline, the data split and what was removed), then where
its outputs are and what next."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io.core import Version

METRICS = "evaluation.reporting.metrics"
SPLIT_SUMMARY = "data_engineering.reporting.split_summary"
SWEEP_SPLIT_SUMMARY = "sensitivity.reporting.split_summary"  # the sweep's: its largest subset
TRAINING_SUMMARY = "sft_training.reporting.training_summary"
PREFLIGHT_GATE = "preflight.int.passed"
SWEEP_ANALYSIS = "sensitivity.reporting.analysis"
PREDICTOR_EVALUATION = "predictor.reporting.evaluation"
PREDICTOR_CARD = "predictor.model.card"


def sweep_headline(analysis: dict[str, Any]) -> str:
    """The sweep's result in one line: the best configuration (and what it was selected on) and the knee."""
    best = analysis.get("best")
    if not best:
        return "sweep: no finished run yet"
    line = (f"sweep best: {best.get('data_variant', 'clean')} n={best['train_size']} lr={best['learning_rate']:g} "
            f"r={best['lora_r']} -> test {analysis.get('metric', 'primary')} {100 * best['mean_primary']:.1f}% "
            f"(selected on {analysis.get('selected_on', 'test')})")
    knees = [c["knee_size"] for c in analysis.get("curves", []) if c.get("data_variant", "clean") == "clean"
             and c.get("knee_size") is not None]
    return line + (f", knee at {int(knees[0])} examples" if knees else ", no knee over these sizes")


def predictor_headline(evaluation: Any, card: dict[str, Any]) -> str:
    """The shipped predictor and its error beside the mean baseline on every split, in points."""
    rmse = evaluation.pivot_table(index="split", columns="model", values="rmse", aggfunc="first")
    parts = [f"{split} RMSE {row['selected']:.1f} vs mean {row['baseline_mean']:.1f}"
             for split, row in rmse.iterrows() if {"selected", "baseline_mean"} <= set(row.dropna().index)]
    return f"predictor shipped: {card.get('model')} ({'; '.join(parts) or 'no split scored'}; points)"


def mlflow_run_line() -> str | None:
    """The run this pipeline logged to, by name, with a link that opens the UI's model-training view."""
    try:
        import mlflow

        from finetune_predictor.tracking import tracking_server_url, ui_url

        run = mlflow.last_active_run()
    except Exception:  # a courtesy line: no store, no line
        return None
    if run is None:
        return None
    link = ui_url(run.info.experiment_id, run.info.run_id, server=tracking_server_url())
    return f"MLflow run {run.info.run_name!r}: {link}"


def _saved_path(dataset: Any) -> Path | None:
    """The path a (possibly versioned, possibly MLflow-wrapped) file dataset saved to in this run."""
    version = getattr(dataset, "_version", None)
    if version is not None and version.save and hasattr(dataset, "_get_versioned_path"):
        # _get_save_path() refuses a path that exists, which it does once the run has saved there.
        return Path(str(dataset._get_versioned_path(version.save))).resolve()
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)).resolve() if filepath is not None else None


class RunSummaryHooks:
    """Prints the result first (the headline of a run that evaluated a fine-tune), then the absolute paths of
    the run's adapter, predictions, metrics and plots, and next commands."""

    def __init__(self) -> None:
        self._started = time.perf_counter()

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._started = time.perf_counter()

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], run_result: dict[str, Any], pipeline: Any,
                           catalog: Any) -> None:
        if METRICS in pipeline.all_outputs():
            from finetune_predictor.modeling.evaluation import headline  # torch-heavy: only for runs that evaluated

            try:
                metrics = catalog.load(METRICS)
                print(f"\nfinetune-predictor: {headline(metrics, time.perf_counter() - self._started)}")
            except (KeyError, TypeError, ValueError) as error:  # a run without both sides has no headline
                print(f"\nfinetune-predictor: no headline ({type(error).__name__}: {error})")
        self._print_results(pipeline, catalog)
        for split in (SPLIT_SUMMARY, SWEEP_SPLIT_SUMMARY):
            if split in pipeline.all_outputs():
                self._print_split(split, pipeline, catalog)
        run_line = mlflow_run_line()
        if run_line:
            print(f"finetune-predictor: {run_line}")
        lines = []
        for name in sorted(pipeline.all_outputs()):
            try:
                dataset = catalog.get(name)
            except Exception:
                continue
            summary = (getattr(dataset, "metadata", None) or {}).get("summary")
            path = _saved_path(dataset) if summary else None
            if path is not None and path.exists():
                lines.append(f"  {summary + ':':<28} {path}")
        if not lines:
            return
        project = Path.cwd()
        print("\nfinetune-predictor: run finished. Outputs:")
        print("\n".join(lines))
        print("Next:")
        import mlflow

        from finetune_predictor.tracking import tracking_server_url

        server = tracking_server_url()
        if server:  # a shared tracking server serves its own UI
            print(f"  compare runs in the MLflow UI:  open {server}")
        else:  # the store this run wrote to (MLFLOW_TRACKING_URI may name another than the project's mlflow.db)
            print(f"  compare runs in the MLflow UI:  cd {project} && .venv/bin/mlflow ui "
                  f"--backend-store-uri {mlflow.get_tracking_uri()}   (then open http://127.0.0.1:5000)")
        print('  run on your own data:           kedro run --pipeline=mini_test100 --params '
              '"data.path=my.jsonl,data.label_positive=fake,data.label_negative=legitimate"')
        print("  inspect the pipelines:          kedro viz  (pip install -e '.[viz]')\n")

    @staticmethod
    def _print_results(pipeline: Any, catalog: Any) -> None:
        """The sweep's and the predictor's headline, when this pipeline produced them."""
        outputs = pipeline.all_outputs()
        try:
            if SWEEP_ANALYSIS in outputs:
                print(f"\nfinetune-predictor: {sweep_headline(catalog.load(SWEEP_ANALYSIS))}")
            if PREDICTOR_EVALUATION in outputs and PREDICTOR_CARD in outputs:
                print(f"\nfinetune-predictor: "
                      f"{predictor_headline(catalog.load(PREDICTOR_EVALUATION), catalog.load(PREDICTOR_CARD))}")
        except Exception as error:  # a courtesy line must not fail a finished run
            print(f"\nfinetune-predictor: no headline ({type(error).__name__}: {error})")

    @staticmethod
    def _print_split(split: str, pipeline: Any, catalog: Any) -> None:
        """The data line: train/test counts and what was removed on the way (and, when this run trained,
        how many training prompts were cut to model.max_length)."""
        from finetune_predictor.data.task_data import split_headline

        try:
            summary = catalog.load(split)
            training = catalog.load(TRAINING_SUMMARY) if TRAINING_SUMMARY in pipeline.all_outputs() else None
        except Exception as error:  # the line is a courtesy: a dataset that cannot be read back must not fail the run
            print(f"\nfinetune-predictor: no data summary ({type(error).__name__}: {error})")
            return
        print(f"\nfinetune-predictor: {split_headline(summary, training)}")


class RedactSecretsHooks:
    """Masks credentials (a URI's password, the environment's tokens) in every log line of a session, however
    it was opened: ``kedro run`` installs the filter itself, a notebook's or a script's session through here."""

    @hook_impl
    def after_context_created(self) -> None:
        from finetune_predictor.redaction import install_filter

        install_filter()


class SettingsCheckHooks:
    """Refuses unknown keys and wrong values of the parameter groups a pipeline reads, before it starts. A
    pipeline with the preflight leaves this to the preflight (its verdict table has a ``settings`` row); the
    others (``data_engineering``, ``predictor``, ``forecast``) would otherwise run on a misspelt setting."""

    @hook_impl(tryfirst=True)  # before the MLflow hook opens a run for a pipeline that cannot start
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        if PREFLIGHT_GATE in pipeline.all_outputs():
            return
        inputs = set(pipeline.inputs())
        groups = sorted({name.split(":", 1)[1].split(".")[0] for name in inputs if name.startswith("params:")})
        if not groups and "parameters" not in inputs:
            return
        from finetune_predictor.settings_schema import check_parameters

        check_parameters(catalog.load("parameters"), None if "parameters" in inputs else groups)


def producing_pipeline(dataset_name: str, registered: Any = None) -> str | None:
    """The smallest registered pipeline that makes ``dataset_name`` (``predictor`` for the card), else None."""
    if registered is None:
        from kedro.framework.project import pipelines as registered
    makers = [(len(pipeline.nodes), name) for name, pipeline in registered.items()
              if name != "__default__" and dataset_name in pipeline.all_outputs()]
    return min(makers)[1] if makers else None


class MissingInputsHooks:
    """Refuses to start a pipeline whose inputs another pipeline makes (the predictor's card and runs table for
    predict) while they do not exist yet. Such a run otherwise spent its preflight and meta-feature probes, then
    stopped on a bare ``DatasetError``. Inputs a pipeline can do without are read through
    ``datasets.OptionalDataset`` and never refused (rank_datasets' view of the card, which ranks by the prior
    without one; candidate_study's view of the last sweep's split summary, which candidate_study.test_sha256
    replaces)."""

    def __init__(self, registered: Any = None) -> None:
        self._registered = registered  # None: the project's registered pipelines

    @hook_impl(tryfirst=True)  # before the MLflow hook opens a run for a pipeline that cannot finish
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        from finetune_predictor.errors import UserFacingError

        missing = [name for name in sorted(pipeline.inputs())
                   if not name.startswith("params:") and name != "parameters" and name in catalog
                   and _is_local_file(catalog.get(name)) and not catalog.exists(name)]
        if not missing:
            return
        where = ", ".join(f"{name} ({catalog.get(name)._filepath})" for name in missing)
        makers = sorted({maker for name in missing if (maker := producing_pipeline(name, self._registered))})
        env = f" --env={run_params['env']}" if run_params.get("env") not in (None, "", "local") else ""
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name")]
        command = "kedro run" + (f" --pipeline={','.join(map(str, names))}" if any(names) else "") + env
        raise UserFacingError(
            f"`{command}` reads {len(missing)} dataset(s) that do not exist yet", where,
            "run " + " then ".join(f"`kedro run --pipeline={maker}{env}`" for maker in makers) + " first"
            if makers else "create them first")


def _is_local_file(dataset: Any) -> bool:
    """A dataset read from a file here: not an in-memory one (Kedro names those itself), nor a kedro-mlflow
    artifact loaded from another MLflow run (``run_id``), whose local file need not exist."""
    return getattr(dataset, "_filepath", None) is not None and not getattr(dataset, "run_id", None)


def pin_load_to_saved_version(dataset: Any) -> bool:
    """Make a versioned dataset load the version it has just saved. Returns whether it was pinned."""
    version = getattr(dataset, "_version", None)
    if not isinstance(version, Version) or not version.save or version.load == version.save:
        return False
    dataset._version = Version(version.save, version.save)
    dataset._clear_version_cache()
    return True


class ReadOwnWritesHooks:
    """A versioned dataset saved during a run is read back, later in the same run, at the version this run
    saved. Kedro otherwise loads the newest version on disk, which another ``kedro run`` in the same project
    may have written in between: two sweeps run side by side once swapped their reports this way, and two
    mini_test100 runs could evaluate each other's adapter."""

    def __init__(self) -> None:
        self._catalog: Any = None

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        if self._catalog is not None and dataset_name in self._catalog:
            pin_load_to_saved_version(self._catalog.get(dataset_name))


def local_versioned_filepath(dataset: Any) -> Path | None:
    """The local base path of a versioned file dataset (the folder its versions live in), else None."""
    if not isinstance(getattr(dataset, "_version", None), Version):
        return None
    filepath, protocol = getattr(dataset, "_filepath", None), getattr(dataset, "_protocol", "file")
    return Path(str(filepath)) if filepath is not None and protocol in ("file", None) else None


class AdoptUnversionedOutputsHooks:
    """A project whose ``data/`` was written before some of its datasets became versioned holds plain files
    where Kedro now expects a folder of versions; every run reading or writing them failed with a bare
    ``NotADirectoryError``. Each such file is moved into the versioned layout (dated by its modification time)
    before the run starts, and the move is logged: the next run reads it as the latest version."""

    @hook_impl(tryfirst=True)
    def after_catalog_created(self, catalog: Any) -> None:
        import logging

        from finetune_predictor.modeling.artifacts import adopt_unversioned_file

        for name in list(catalog):
            try:
                path = local_versioned_filepath(catalog.get(name))
            except Exception:  # a dataset that cannot be built fails later, with its own message
                continue
            moved = adopt_unversioned_file(path) if path is not None else None
            if moved is not None:
                logging.getLogger(__name__).warning(
                    "%s: %s was written before this dataset was versioned; moved to %s (its latest version)",
                    name, path, moved)
