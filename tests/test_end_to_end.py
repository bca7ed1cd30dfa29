"""`kedro run --pipeline=mini_test100` on the real embedded model, shrunk to a handful of steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_project

SMALL = ("data.train_per_class=6,data.test_per_class=6,data.synthetic.num_records=200,"
         "training.max_steps=3,training.learning_rate=0.002,training.per_device_train_batch_size=4")
# A user's conf/local override of one key must not drop the rest of its group, with or without --params.
LOCAL_OVERRIDE = "evaluation:\n  max_new_tokens: 4\n"


def _project_copy(tmp_path: Path) -> Path:
    project = copy_project(tmp_path / "project")
    (project / "conf" / "local" / "parameters_evaluation.yml").write_text(LOCAL_OVERRIDE)
    return project


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    kedro = Path(sys.executable).with_name("kedro")
    return subprocess.run([str(kedro), "run", *args], cwd=project, capture_output=True, text=True, timeout=900)


@pytest.mark.e2e
def test_mini_test100_end_to_end(tmp_path, embedded_model):
    import mlflow

    project = _project_copy(tmp_path)
    result = _kedro(project, "--pipeline=mini_test100", "--params", SMALL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Traceback" not in output
    assert "telemetry" not in output.lower()
    assert "Warning" not in output and "WARNING" not in output, output[-6000:]  # no alarming output

    # The run ends by printing where its outputs are, as absolute paths, and what to try next.
    printed = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
               for line in result.stdout.splitlines() if line.startswith("  ") and ": " in line and "/" in line}
    for key in ("adapter", "baseline predictions", "fine-tuned predictions", "metrics", "plot"):
        assert key in printed, result.stdout[-3000:]
        assert Path(printed[key]).is_absolute() and Path(printed[key]).exists()
    assert "mlflow ui" in result.stdout
    adapter = Path(printed["adapter"])
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in adapter.iterdir()}

    metrics = json.loads(Path(printed["metrics"]).read_text())
    for view in ("baseline", "finetuned"):
        for key in ("accuracy", "f1_macro", "auc", "confusion_matrix", "parse_failure_rate"):
            assert key in metrics[view]
        assert sum(map(sum, metrics[view]["confusion_matrix"])) == 12

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finetune_predictor"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params, logged = run.data.params, run.data.metrics
    for key in ("model_name", "train_size", "learning_rate", "lora_r", "lora_alpha", "num_train_epochs", "seed",
                "train_sha256", "test_sha256", "precision", "quantization_requested", "quantization_actual",
                "engine", "records_truncated", "replicate_key"):
        assert key in params, key
    assert params["dataset_family"] == "bundled-synthetic-news-standard" and params["quantization_actual"] == "none"
    assert params["train_size"] == "12"
    assert params["model_name"] == "SmolLM2-135M-Instruct"
    for key in ("baseline_accuracy", "finetuned_accuracy", "baseline_f1_macro", "finetuned_f1_macro",
                "finetuned_auc", "finetuned_parse_failure_rate", "train_loss", "classical_accuracy",
                "classical_f1_macro", "finetuned_predicted_share_fake"):
        assert key in logged, key
    assert run.info.run_name == "n=12 lr=2e-03 r=8 a=32 ep=3 seed=42 | bundled-synthetic-news | SmolLM2-135M-Instruct"
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 3
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"adapter", "predictions", "plots"} <= artifacts
    adapter_files = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "adapter")}
    assert adapter_files == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                             "adapter/manifest.json"}  # the sha256 at save, verified when it is loaded


@pytest.mark.e2e
def test_pipelines_spelling_runs_quietly(tmp_path):
    """kedro >= 1.4 spells it `--pipelines`; the users' `--pipeline` (above) must work the same way."""
    project = _project_copy(tmp_path)
    result = _kedro(project, "--pipelines=data_engineering", "--params", SMALL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Warning" not in output and "WARNING" not in output, output[-6000:]
    assert "Completed 2 out of 2 tasks" in output
