"""Project datasets for the catalog: a versioned adapter folder, the MLflow run record, and the file datasets the
catalog uses with atomic saves (``Atomic*Dataset``: written beside the destination and renamed into place, so a
kill mid-save never leaves a half-written report, table, plot or card that a later run would load)."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.pandas import JSONDataset as PandasJSONDataset
from kedro_datasets.text import TextDataset

from finetune_predictor.modeling.artifacts import (
    MANIFEST_NAME,
    AtomicSaveMixin,
    atomic_directory,
    atomic_write_text,
    folder_checksums,
    verify_manifest,
    write_manifest,
)

logger = logging.getLogger(__name__)


class AdapterDataset(AbstractVersionedDataset[dict[str, bytes], str]):
    """A LoRA adapter folder: saved from ``{file name: bytes}``, loaded as the folder's path.

    Versioned like any Kedro dataset, so each run keeps its own adapter next to the earlier ones. The folder is
    written under a hidden name and renamed when complete. Its ``manifest.json`` (the sha256 training recorded)
    is checked against the bytes before the rename, or written from them when none is given; evaluation
    checks it again when it loads the adapter (``ModelSession.load_model``).
    """

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(filepath=PurePosixPath(filepath), version=version, exists_function=self._folder_exists)
        self.metadata = metadata

    @staticmethod
    def _folder_exists(path: str) -> bool:
        return Path(path).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

    def load(self) -> str:
        path = Path(self._get_load_path())
        if not path.is_dir():
            raise DatasetError(f"No adapter folder at {path}")
        return str(path.resolve())

    def save(self, data: dict[str, bytes]) -> None:
        for name in data:
            if "/" in name or name.startswith("."):
                raise DatasetError(f"Adapter file name {name!r} must be a plain file name")
        path = Path(self._get_save_path())
        with atomic_directory(path) as staging:  # never a folder that looks complete
            for name, content in data.items():
                (staging / name).write_bytes(content)
            if MANIFEST_NAME in data:
                verify_manifest(staging, shown_as=path)
            else:
                write_manifest(staging, folder_checksums(staging))

    def _exists(self) -> bool:
        try:
            return Path(self._get_load_path()).is_dir()
        except DatasetError:
            return False


class MlflowRunRecordDataset(AbstractDataset[Any, Any]):
    """Logs a :class:`~finetune_predictor.tracking.RunRecord` (name, params, metrics) to the active MLflow
    run that kedro-mlflow opened, through the tracking module (the one place that logs records).

    Saving outside an MLflow run only logs a warning, so the pipeline also runs without tracking.
    """

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata = metadata

    def save(self, data: Any) -> None:
        from finetune_predictor import tracking

        run_id = tracking.active_run_id()
        if run_id is None:
            logger.warning("No active MLflow run: the run record %r was not logged", data.name)
            return
        tracking.log_record(run_id, data)

    def load(self) -> Any:
        raise DatasetError("A run record is written to MLflow; read runs back with tracking.runs_table")

    def _exists(self) -> bool:
        return False

    def _describe(self) -> dict[str, Any]:
        return {"target": "active MLflow run"}


class OptionalDataset(AbstractDataset[None, Any]):
    """A read-only view of another pipeline's output that a pipeline can do without: loads as ``None`` while the
    wrapped dataset does not exist yet (rank_datasets ranks by the no-fitting prior before any predictor is
    saved). An input a pipeline cannot do without stays a plain entry, which ``hooks.MissingInputsHooks`` checks
    before the run starts. ``versioned: true`` at the top level loads the wrapped dataset's latest version."""

    def __init__(self, dataset: dict[str, Any], version: Version | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        config = {**dataset, "versioned": version is not None}
        self._wrapped = AbstractDataset.from_config("optional", config, version.load if version else None,
                                                    version.save if version else None)
        self.metadata = metadata

    def load(self) -> Any:
        return self._wrapped.load() if self._wrapped.exists() else None

    def save(self, data: None) -> None:
        raise DatasetError("An optional view is read-only: save through the entry of the pipeline that makes it")

    def _exists(self) -> bool:
        return True  # absence is a value here (None), never a missing input

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._wrapped._describe()}


class RunsArchiveDataset(AbstractDataset[Any, Any]):
    """The runs archive (``tracking.archive``): a CSV committed to git, typed by its schema when loaded (a missing
    or mistyped column is one error naming it), and an empty archive where the file does not exist yet. Saved
    atomically, columns in schema order, with ``schema.json`` beside it. Git versions it: each commit of the file
    is a version of the meta-dataset."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def load(self) -> Any:
        from finetune_predictor.tracking import archive

        return archive.load(Path(self._filepath))

    def save(self, data: Any) -> None:
        from finetune_predictor.tracking import archive

        path = Path(self._filepath)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, archive.ordered(data).to_csv(index=False, lineterminator="\n"))
        atomic_write_text(path.with_name("schema.json"), archive.schema_text())

    def _exists(self) -> bool:
        return True  # an absent archive is an empty one: the first archive_runs creates it

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


def _artifact_dataset_base() -> type:
    from kedro_mlflow.io.artifacts import MlflowArtifactDataset

    return MlflowArtifactDataset


class VersionedArtifactDataset(_artifact_dataset_base()):  # type: ignore[misc]
    """kedro-mlflow's ``MlflowArtifactDataset`` whose wrapped dataset shares the catalog's save version.

    The upstream wrapper builds its inner dataset with a fresh timestamp, so once Kedro materialises it
    lazily (seconds after the session started) the catalog refuses it: "All datasets in the catalog must
    have the same save version". Declaring ``versioned: true`` at the top level lets Kedro hand the
    session's ``Version`` here, and it is set on the inner dataset. ``metadata`` may sit at either level.
    """

    def __new__(cls, dataset: str | dict[str, Any], version: Version | None = None, run_id: str | None = None,
                artifact_path: str | None = None, credentials: dict[str, Any] | None = None,
                metadata: dict[str, Any] | None = None) -> Any:
        inner = dict(dataset) if isinstance(dataset, dict) else {"type": dataset}
        inner["versioned"] = version is not None
        # The upstream wrapper replaces the inner dataset's metadata with its own; keep the inner one.
        metadata = metadata if metadata is not None else inner.get("metadata")
        wrapped = _artifact_dataset_base()(dataset=inner, run_id=run_id, artifact_path=artifact_path,
                                           credentials=credentials, metadata=metadata)
        if version is not None:
            wrapped._version = version
        return wrapped


# The catalog's file datasets, saved atomically (artifacts.AtomicSaveMixin); the same arguments as the
# kedro-datasets class each extends.


class AtomicTextDataset(AtomicSaveMixin, TextDataset):
    """``text.TextDataset`` (Markdown and LaTeX reports), saved atomically."""


class AtomicCSVDataset(AtomicSaveMixin, CSVDataset):
    """``pandas.CSVDataset`` (tables, rankings), saved atomically."""


class AtomicJSONDataset(AtomicSaveMixin, JSONDataset):
    """``json.JSONDataset`` (summaries, the predictor card), saved atomically."""


class AtomicPandasJSONDataset(AtomicSaveMixin, PandasJSONDataset):
    """``pandas.JSONDataset`` (prediction tables as JSON lines), saved atomically."""


class AtomicParquetDataset(AtomicSaveMixin, ParquetDataset):
    """``pandas.ParquetDataset`` (records and splits), saved atomically."""


class AtomicMatplotlibDataset(AtomicSaveMixin, MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` (plots), saved atomically."""
