"""notebooks/analysis.ipynb runs top to bottom (nbclient) on a small synthetic runs table and draws every
sweep plot and the predictor's SHAP beeswarm."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT
from tests.test_predictor import synthetic_runs

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (dev extra)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (dev extra)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (dev extra)")

NOTEBOOK = PROJECT_ROOT / "notebooks" / "analysis.ipynb"
# A quick card: two candidates and a small LightGBM (the project's defaults choose among five).
PREDICTOR = ('{"candidates": ["lightgbm_shap", "ridge_cv"], "n_folds": 4, "group_columns": ["dataset_family"],'
             ' "lightgbm": {"n_estimators": 60, "num_leaves": 7, "min_child_samples": 5, "verbose": -1}}')


def _sweep_table(n: int = 48):
    """A sweep's runs as the MLflow runs table holds them: settings as param_* strings, metrics, mf_* features."""
    rng = np.random.default_rng(1)
    table = synthetic_runs(n, seed=1)
    table["run_id"] = [f"run{i:03d}" for i in range(n)]
    table["task"] = "binary_classification"
    table["param_train_size"] = rng.choice([16, 32, 64, 128], n).astype(str)
    table["param_learning_rate"] = rng.choice(["0.0001", "0.0003"], n)
    table["param_lora_r"] = rng.choice(["4", "8"], n)
    table["param_lora_alpha"], table["param_lora_dropout"], table["param_num_train_epochs"] = "32", "0.1", "3"
    table["param_data_variant"] = "clean"
    table["baseline_primary"] = 0.5
    return table


def _image_count(cell) -> int:
    images = [output["data"]["image/png"] for output in cell.get("outputs", [])
              if output.get("output_type") == "display_data" and "image/png" in output.get("data", {})]
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    return len(images)


def test_analysis_notebook_runs_on_a_small_runs_table(tmp_path, monkeypatch):
    path = tmp_path / "runs.csv"
    _sweep_table().to_csv(path, index=False)
    monkeypatch.setenv("FINETUNE_PREDICTOR_RUNS_CSV", str(path))
    monkeypatch.setenv("FINETUNE_PREDICTOR_CARD", str(tmp_path / "no-card.json"))
    monkeypatch.setenv("FINETUNE_PREDICTOR_PREDICTOR_PARAMS", PREDICTOR)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = "\n".join(output.get("text", "") for cell in code for output in cell.get("outputs", []))
    assert "48 finished runs" in text and "sizes [16, 32, 64, 128]" in text
    assert "Warning" not in text, text
    assert "Predictor: " in text and "on 48 runs" in text
    plots = {cell.source.split("(")[1].removeprefix("report."): _image_count(cell) for cell in code
             if cell.source.startswith("show(")}
    assert plots == {"plot_accuracy_vs_size": 1, "plot_accuracy_vs_hyperparameter": 2, "plot_model_size_heatmap": 1,
                     "plot_shap_beeswarm": 1}, plots
