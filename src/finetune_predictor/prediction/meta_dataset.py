"""The meta-dataset study: chunks of sensitivity sweeps whose finished runs grow the runs archive.

``conf/meta_dataset/meta_dataset.yml`` lists the chunks; each is a list of sweeps, a sweep being ``data.*`` and
``sensitivity.*`` settings laid over the ``meta_dataset`` environment's parameters. ``kedro meta-dataset --chunk
NAME`` runs a chunk's sweeps one after the other (each a Kedro session of the ``sensitivity`` pipeline, so a
killed chunk resumes from its finished configurations), then appends the store's finished runs to the archive.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetune_predictor.errors import UserFacingError

logger = logging.getLogger(__name__)

ENV = "meta_dataset"
CONFIG_KEY = "meta_dataset"
SWEEP_KEYS = {"data", "sensitivity"}


def load_study(project_path: Path, env: str = ENV) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The chunks of the study (anchors resolved) and the ``sensitivity`` settings every sweep starts from."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project_path, env=env) as session:
        context = session.load_context()
        try:
            chunks = context.config_loader[CONFIG_KEY].get("chunks") or {}
        except KeyError:
            chunks = {}
        sensitivity = dict(context.params.get("sensitivity") or {})
    if not chunks:
        raise UserFacingError(f"No meta-dataset chunks found in conf/{env}/meta_dataset.yml",
                              where=f"conf/{env}/meta_dataset.yml",
                              fix="list chunks under `chunks:`, each a list of {data: ..., sensitivity: ...} sweeps")
    for name, sweeps in chunks.items():
        for index, sweep in enumerate(sweeps):
            extra = sorted(set(sweep) - SWEEP_KEYS)
            if extra:
                raise UserFacingError(f"Sweep {index} of chunk {name!r} sets {extra}",
                                      where=f"conf/{env}/meta_dataset.yml",
                                      fix=f"a sweep sets only {sorted(SWEEP_KEYS)}")
    return chunks, sensitivity


def chunk_sweeps(chunks: Mapping[str, list[dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    """The sweeps of chunk ``name``; an unknown name is one message listing the known ones."""
    if name not in chunks:
        raise UserFacingError(f"Unknown meta-dataset chunk {name!r}", where="--chunk",
                              fix=f"one of {', '.join(chunks)} (kedro meta-dataset --list shows them)")
    return list(chunks[name])


def sweep_size(sweep: Mapping[str, Any], base_sensitivity: Mapping[str, Any]) -> int:
    """How many fine-tunes the sweep's grid holds (its settings over the environment's)."""
    from finetune_predictor.pipelines.sensitivity.grid import expand_grid

    return len(expand_grid({**dict(base_sensitivity), **dict(sweep.get("sensitivity") or {})}, "default"))


def describe(sweep: Mapping[str, Any]) -> str:
    """A sweep in one line: task, family or source, and its grid's axes."""
    data, grid = dict(sweep.get("data") or {}), dict(sweep.get("sensitivity") or {})
    source = data.get("family") or data.get("path") or f"bundled {(data.get('synthetic') or {}).get('difficulty', '')}"
    axes = ", ".join(f"{key}={value}" for key, value in grid.items() if key != "data_variants")
    variants = [v.get("name") for v in grid.get("data_variants") or []]
    return f"{data.get('task', 'binary_classification')} | {source} | {axes}" + (f" | variants {variants}"
                                                                                  if variants else "")


def run_sweep(project_path: Path, sweep: Mapping[str, Any], env: str = ENV) -> None:
    """One sweep: the ``sensitivity`` pipeline with the sweep's settings as runtime parameters."""
    from kedro.framework.session import KedroSession

    params = {key: dict(sweep[key]) for key in SWEEP_KEYS if sweep.get(key)}
    with KedroSession.create(project_path=project_path, env=env, runtime_params=params) as session:
        session.run(pipeline_name="sensitivity")


def archive(project_path: Path, env: str = ENV) -> None:
    """Append the store's finished runs to the runs archive (``kedro run --pipeline=archive_runs``)."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession

    if "archive_runs" not in pipelines:
        logger.warning("This project has no archive_runs pipeline yet: the chunk's runs stay in the tracking store")
        return
    with KedroSession.create(project_path=project_path, env=env) as session:
        session.run(pipeline_name="archive_runs")
