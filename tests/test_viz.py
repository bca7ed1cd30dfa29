"""`kedro viz build` (the `viz` extra): a static site whose pipeline data draws every registered pipeline with
its datasets in their catalog layers and each pipeline's nodes collapsed into its namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_predictor.pipeline_registry import register_pipelines
from tests.conftest import copy_project
from tests.test_conventions import DRAWN_IN

pytest.importorskip("kedro_viz", reason="kedro-viz is not installed (pip install -c constraints.txt -e '.[viz]')")

QUIET = {"KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def project_copy(tmp_path: Path) -> Path:
    """The project's conf (without conf/local), src and pyproject.toml in a fresh folder, so a command there
    writes its build/, data/ and mlflow.db nowhere near the checkout."""
    return copy_project(tmp_path / "project")


def kedro_command(project: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    kedro = Path(sys.executable).with_name("kedro")
    return subprocess.run([str(kedro), *args], cwd=project, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **QUIET})


def expected_layer(dataset: str) -> str:
    return DRAWN_IN.get(dataset, dataset.split(".")[1])


@pytest.fixture(scope="module")
def viz_build(tmp_path_factory) -> tuple[Path, str]:
    project = project_copy(tmp_path_factory.mktemp("viz"))
    result = kedro_command(project, "viz", "build")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return project / "build", output


def test_viz_build_writes_a_site_without_errors(viz_build):
    build, output = viz_build
    assert "Success" in output and (build / "index.html").is_file()
    assert "Traceback" not in output and "ERROR" not in output, output[-4000:]
    # A cycle among the layers makes kedro-viz drop them all, with this warning.
    assert "circular" not in output.lower(), output[-4000:]


def test_every_pipeline_draws_its_datasets_in_their_layers(viz_build):
    build, _ = viz_build
    pipelines = register_pipelines()
    assert {path.name for path in (build / "api" / "pipelines").iterdir()} == set(pipelines)
    for name, pipeline in pipelines.items():
        data = json.loads((build / "api" / "pipelines" / name).read_text())
        datasets = {node["name"]: node.get("layer") for node in data["nodes"] if node["type"] == "data"}
        assert datasets, name
        assert datasets == {dataset: expected_layer(dataset) for dataset in datasets}, name
        assert set(datasets.values()) <= set(data["layers"]), name
        # Each pipeline's nodes collapse into a group named after the pipeline that owns them.
        namespaces = {node.namespace for node in pipeline.nodes}
        assert namespaces <= set(data["modular_pipelines"]), name
        tasks = {node["full_name"]: node for node in data["nodes"] if node["type"] == "task"}
        assert set(tasks) == {node.name for node in pipeline.nodes}, name


def test_tags_and_the_default_pipeline(viz_build):
    build, _ = viz_build
    main = json.loads((build / "api" / "main").read_text())
    assert {tag["id"] for tag in main["tags"]} >= {"gpu", "reporting"}
    tasks = {node["full_name"]: set(node["tags"]) for node in main["nodes"] if node["type"] == "task"}
    assert "gpu" in tasks["sft_training.train_adapter"] and "reporting" in tasks["evaluation.comparison_table"]
    assert set(main["modular_pipelines"]) >= {"preflight", "data_engineering", "sft_training", "evaluation"}
