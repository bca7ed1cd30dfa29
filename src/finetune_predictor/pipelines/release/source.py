"""The run a release is made of: found in the tracking store, its settings read back, its test set found by hash.

A release evaluates every variant with the source run's own task, prompt and scoring, so those settings are
read back from the params the run logged (flattened groups, lists joined by commas) and checked by the
settings schema, not taken from today's ``conf/``. The test set is the file whose content hash equals the
run's ``test_sha256`` among the versions this project saved (mini_test100's and the sweeps'), so it is the
run's own fixed test set or nothing. The adapter and its predictions come from the run's MLflow artifacts.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.data.records import content_sha256
from finetune_predictor.errors import UserFacingError
from finetune_predictor.settings_schema import DataSettings, EvaluationSettings, ModelSettings

logger = logging.getLogger(__name__)

SOURCE_PIPELINE = "mini_test100"
# Where this project saves test and train sets (conf/base/catalog.yml): each version is a candidate.
TEST_SET_FOLDERS = ("data/03_primary/test_set.parquet", "data/03_primary/sensitivity/test_set.parquet")
TRAIN_SET_FOLDERS = ("data/03_primary/train_set.parquet",)
ADAPTER_ARTIFACT = "adapter"
PREDICTIONS_ARTIFACT = "predictions/finetuned_predictions.jsonl"
# Settings the run record logs under its own names (tracking.settings_configuration), not their paths.
RECORD_NAMES = {"task": ("data", "task"), "model_name": ("model", "name"), "max_length": ("model", "max_length")}


class SourceRunError(UserFacingError):
    """The run to release cannot be found, or lacks what a release needs."""


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _is_mini_test100(run: Any) -> bool:
    """A plain ``kedro run`` runs ``__default__`` (= mini_test100); kedro-mlflow tags the pipeline names."""
    names = run.data.tags.get("pipeline_names") or run.data.tags.get("pipeline_name") or SOURCE_PIPELINE
    return SOURCE_PIPELINE in names or "__default__" in names


def find_source_run(run_id: str | None, experiment_name: str) -> Any:
    """The FINISHED run ``run_id``, or with none the latest FINISHED mini_test100 run of ``experiment_name``
    that has a fine-tuned metric."""
    import mlflow

    where = f"release.run_id (tracking store {mlflow.get_tracking_uri()})"
    if run_id:
        try:
            run = _client().get_run(run_id)
        except Exception as error:
            raise SourceRunError(f"No run {run_id!r} in the tracking store", where,
                                 "set release.run_id to a run id the MLflow UI shows") from error
        if run.info.status != "FINISHED" or "finetuned_primary" not in run.data.metrics:
            raise SourceRunError(f"Run {run_id} is {run.info.status} without a fine-tuned metric: only a finished "
                                 "fine-tune can be released", where, "give the id of a FINISHED fine-tune run")
        return run
    experiment = mlflow.get_experiment_by_name(experiment_name)
    runs = _client().search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                                 order_by=["attributes.end_time DESC"], max_results=200) if experiment else []
    for run in runs:
        if "finetuned_primary" in run.data.metrics and _is_mini_test100(run):
            return run
    raise SourceRunError(f"No FINISHED mini_test100 run in experiment {experiment_name!r}", where,
                         "run `kedro run --pipeline=mini_test100` first, or set release.run_id")


def _typed(text: str, hint: Any) -> Any:
    """A logged param's text as its setting's value: "" was None, lists were joined by commas."""
    if text == "":
        return None
    if text == "{}":
        return {}  # an empty group (data.columns) is logged as such
    if text in ("True", "False"):
        return text == "True"
    if "tuple[" in str(hint) or "list[" in str(hint):
        return [item for item in text.split(",") if item != ""]
    return text


def _group(params: dict[str, str], prefix: str, cls: type) -> dict[str, Any]:
    """The settings group ``prefix`` rebuilt from the run's flattened params and checked by its schema."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, text in params.items():
        if not key.startswith(prefix + "."):
            continue
        name, _, rest = key[len(prefix) + 1:].partition(".")
        if name not in hints:
            continue  # e.g. model.registry.*, the resolved registry entry, not a setting of the group
        if rest:
            nested = typing.get_type_hints(hints[name]) if dataclasses.is_dataclass(hints[name]) else {}
            values.setdefault(name, {})[rest] = _typed(text, nested.get(rest, str))
        else:
            values[name] = _typed(text, hints[name])
    return dataclasses.asdict(cls.from_params(values))


def run_settings(run: Any) -> dict[str, Any]:
    """The data, model and evaluation groups and ``training.precision`` the run used, from its params."""
    params = dict(run.data.params)
    for name, (group, key) in RECORD_NAMES.items():
        if name in params:
            params[f"{group}.{key}"] = params[name]
    try:
        settings = {"data": _group(params, "data", DataSettings), "model": _group(params, "model", ModelSettings),
                    "evaluation": _group(params, "evaluation", EvaluationSettings)}
    except UserFacingError as error:
        raise SourceRunError(f"The settings run {run.info.run_id} logged cannot be read back: {error}",
                             f"the params of run {run.info.run_id}", "release a run logged by this project "
                             "version, or open an issue with the param named above") from error
    settings["precision"] = params.get("training.precision") or "auto"
    return settings


def find_split(sha256: str, folders: tuple[str, ...], root: str | Path = ".") -> tuple[pd.DataFrame, Path] | None:
    """The saved data set whose content hash is ``sha256`` (newest version first), with its path."""
    candidates = [path for folder in folders for path in Path(root, folder).glob("*/*.parquet")]
    for path in sorted(candidates, key=lambda p: p.parent.name, reverse=True):
        frame = pd.read_parquet(path)
        if {"instruction", "input", "output"} <= set(frame.columns) and content_sha256(frame) == sha256:
            return frame, path
    return None


def run_test_set(run: Any, root: str | Path = ".") -> tuple[pd.DataFrame, Path]:
    """The run's own fixed test set (by ``test_sha256``), or one clear error saying where it was looked for."""
    sha256 = run.data.params.get("test_sha256")
    found = find_split(sha256, TEST_SET_FOLDERS, root) if sha256 else None
    if found is None:
        raise SourceRunError(
            f"The test set of run {run.info.run_id} (test_sha256 {sha256}) is not on this machine: none of the "
            f"versions under {', '.join(TEST_SET_FOLDERS)} has that content", where=str(Path(root).resolve()),
            fix="run the release in the project folder that ran the fine-tune (its data/03_primary keeps the test set)")
    return found


def run_training_targets(run: Any, test: pd.DataFrame, root: str | Path = ".") -> tuple[list[str], str]:
    """The training targets that gave the run's task its labels or schema, and where they came from: the
    run's train set by ``train_sha256``, else (recorded as a fallback) the test set's own targets."""
    sha256 = run.data.params.get("train_sha256")
    found = find_split(sha256, TRAIN_SET_FOLDERS, root) if sha256 else None
    if found is not None:
        return found[0]["output"].astype(str).tolist(), f"train set {found[1]}"
    return test["output"].astype(str).tolist(), "the test set's targets (the run's train set is not on this machine)"


def download_artifact(run_id: str, path: str, target: str | Path) -> Path:
    """One artifact of the run (a file or folder) downloaded into ``target``."""
    import mlflow

    Path(target).mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(target)))
    except Exception as error:
        raise SourceRunError(f"Run {run_id} has no readable artifact {path!r} ({error})", f"run {run_id}",
                             "release a run that finished evaluation (it logs adapter/ and predictions/)") from error
