"""Concurrency (issue 17): two runs at once against the same MLflow store, data folders and model cache do not
clobber each other.

The interleaving is forced, not hoped for: a hook added to the project's own (``KEDRO_WITH_PAUSE``) holds a run
right after it saved a chosen dataset until the test lets it go, so the other run writes the same files and
the same store in between. Both runs use the tiny random Llama, a few records and two optimizer steps (fp32).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from finetune_predictor import task_data, tracking
from finetune_predictor.records import content_sha256
from tests.conftest import PROJECT_ROOT, copy_project
from tests.reliability import record_fault

QUIET = {"KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
COMMON = ("training.max_steps=2,training.per_device_train_batch_size=4,training.precision=fp32,"
          "evaluation.max_new_tokens=3,evaluation.engine=hf")
# Two runs that differ in their data (so reading the other's records shows), sizes, learning rate and seed.
RUN_A = {"data.synthetic.num_records": 120, "data.train_per_class": 3, "data.test_per_class": 3,
         "training.learning_rate": 0.002, "training.seed": 1}
RUN_B = {"data.synthetic.num_records": 160, "data.train_per_class": 4, "data.test_per_class": 4,
         "training.learning_rate": 0.005, "training.seed": 2}

# `kedro run` with one more hook: the project's HOOKS (settings.py) plus PauseAfterSaving, which holds the run
# right after it saved $PAUSE_AFTER_SAVING until $RESUME_FLAG exists. (Kedro imports the installed package before
# it reads the project, so a project copy's own source is not what runs: the hook is added here instead.)
KEDRO_WITH_PAUSE = '''
import os
import sys
import time
from pathlib import Path

from kedro.framework.cli import main
from kedro.framework.hooks import hook_impl

import finetune_predictor.settings as settings


class PauseAfterSaving:
    @hook_impl
    def after_dataset_saved(self, dataset_name):
        if dataset_name != os.environ.get("PAUSE_AFTER_SAVING"):
            return
        Path(os.environ["PAUSED_FLAG"]).touch()
        deadline = time.monotonic() + 600
        while not Path(os.environ["RESUME_FLAG"]).exists() and time.monotonic() < deadline:
            time.sleep(0.2)


settings.HOOKS = (*settings.HOOKS, PauseAfterSaving())
sys.argv[0] = "kedro"
main()
'''


def _start(project: Path, name: str, settings: dict, model_dir: Path, cache: Path, pause_after: str | None,
           tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """``kedro run --pipeline=mini_test100`` in the background, held after saving ``pause_after``; returns it, its
    paused flag and its resume flag."""
    script = tmp_path / "kedro_with_pause.py"
    script.write_text(KEDRO_WITH_PAUSE)
    paused, resume = tmp_path / f"{name}.paused", tmp_path / f"{name}.resume"
    extra = ",".join(f"{key}={value}" for key, value in settings.items())
    environment = {**os.environ, **QUIET, "FINETUNE_PREDICTOR_CACHE": str(cache),
                   "PAUSE_AFTER_SAVING": pause_after or "", "PAUSED_FLAG": str(paused), "RESUME_FLAG": str(resume)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen([sys.executable, str(script), "run", "--pipeline=mini_test100", "--params",
                                f"model.name={model_dir},{COMMON},{extra}"], cwd=project, env=environment,
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    return process, paused, resume


def _wait_for(flag: Path, process: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        assert process.poll() is None, f"the run ended before {flag.name}: {log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {flag.name} after {timeout:.0f} s: {log.read_text()[-4000:]}"
        time.sleep(0.2)


def _finish(process: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    process.wait(timeout=timeout)
    output = log.read_text()
    assert process.returncode == 0, output[-5000:]
    assert "database is locked" not in output and "Traceback" not in output, output[-5000:]
    return output


def expected_split(settings: dict) -> dict:
    """The split summary that the run's own data settings give (computed here, as data_engineering does)."""
    data = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_data.yml").read_text())["data"]
    data["synthetic"]["num_records"] = settings["data.synthetic.num_records"]
    data.update(train_per_class=settings["data.train_per_class"], test_per_class=settings["data.test_per_class"])
    records, _rejects, read_summary = task_data.load_task_records(data)
    return task_data.split_train_test(records, read_summary, data)[2]


def _artifact_json(client, run_id: str, path: str) -> object:
    return json.loads(Path(client.download_artifacts(run_id, path)).read_text())


def _check_own_outputs(client, run, settings: dict, project: Path, other_run) -> None:
    """The run's params, data, predictions and adapter are its own: none of the other run's."""
    params = run.data.params
    assert (float(params["learning_rate"]), int(params["seed"])) == (settings["training.learning_rate"],
                                                                     settings["training.seed"])
    # Its split is the one its own data settings give: it read its own records (an unversioned hand-off before
    # the fix, which the other run overwrote meanwhile), and its digests are those of the sets it saved.
    expected = expected_split(settings)
    summary = _artifact_json(client, run.info.run_id, "split_summary.json")
    for key in ("records_available", "train_size", "test_size", "train_sha256", "test_sha256"):
        assert summary[key] == expected[key], key
        assert key.endswith("available") or params[key] == str(expected[key]), key
    inputs = {d.dataset.name.rsplit("_", 1)[-1]: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert params["train_sha256"].startswith(inputs["train"]) and params["test_sha256"].startswith(inputs["test"])
    saved = {content_sha256(pd.read_parquet(path)) for path in project.glob("data/03_primary/train_set.parquet/*/*")}
    assert params["train_sha256"] in saved and len(saved) == 2
    # Its predictions are of its own test set (the test sets of the two runs share no size).
    predictions = pd.read_json(client.download_artifacts(run.info.run_id, "predictions/finetuned_predictions.jsonl"),
                               lines=True, dtype=False)
    assert len(predictions) == int(params["test_size"])
    metrics = _artifact_json(client, run.info.run_id, "metrics.json")
    assert sum(map(sum, metrics["finetuned"]["confusion_matrix"])) == int(params["test_size"])
    # Its adapter: the artifact is the one its record hashed, and not the other run's.
    local = Path(client.download_artifacts(run.info.run_id, "adapter/adapter_model.safetensors"))
    assert hashlib.sha256(local.read_bytes()).hexdigest() == params["adapter_sha256"]
    assert params["adapter_sha256"] != other_run.data.params["adapter_sha256"]
    assert run.data.tags[tracking.PID_TAG] != other_run.data.tags[tracking.PID_TAG]


def test_two_mini_test100_runs_at_once_keep_their_own_data_runs_and_artifacts(tmp_path, tiny_model_dir, request):
    """A and B start together on one project (one mlflow.db, one data/, one model cache). A is held right after
    it saved its records; B runs to the end meanwhile (writing the same records file, newer versions of every
    versioned dataset, and its run to the store, while A's run is RUNNING); then A goes on. Both finish with
    their own settings, data, predictions and adapter; neither run was marked stale by the other."""
    project = copy_project(tmp_path / "project")
    cache = tmp_path / "cache"
    a, a_paused, a_resume = _start(project, "a", RUN_A, tiny_model_dir, cache, "data_engineering.int.records", tmp_path)
    b, b_paused, b_resume = _start(project, "b", RUN_B, tiny_model_dir, cache, "preflight.reporting.verdict", tmp_path)
    try:
        # Both start at once (their runs opened and their settings logged against one sqlite file), then wait.
        _wait_for(a_paused, a, tmp_path / "a.log")
        _wait_for(b_paused, b, tmp_path / "b.log")
        b_resume.touch()
        _finish(b, tmp_path / "b.log")
        a_resume.touch()
        _finish(a, tmp_path / "a.log")
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.kill()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert all("run_failure" not in run.data.tags for run in runs)
    by_lr = {float(run.data.params["learning_rate"]): run for run in runs}
    run_a, run_b = by_lr[RUN_A["training.learning_rate"]], by_lr[RUN_B["training.learning_rate"]]
    _check_own_outputs(client, run_a, RUN_A, project, run_b)
    _check_own_outputs(client, run_b, RUN_B, project, run_a)
    # The shared hash cache is whole.
    json.loads((cache / "content_hashes.json").read_text())
    record_fault(request.node.name, fault="two mini_test100 runs at once in one project (one store, data/, cache)",
                 injected="both started together; A held after saving its records while B ran to the end, "
                          "then A resumed", outcome="isolated: each run FINISHED with its own params, records, "
                          "train/test versions, predictions and adapter; no lock error, no run marked stale",
                 lost="nothing", time_lost="none")


def _catalog_entry(catalog: dict, name: str) -> dict | None:
    """The catalog entry of ``name``, a dataset factory's (``{plot_name}``) included."""
    import re

    if name in catalog:
        return catalog[name]
    for pattern, entry in catalog.items():
        if "{" in pattern and re.fullmatch(re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(pattern)), name):
            return entry
    return None


def test_every_dataset_a_pipeline_saves_and_reads_back_is_versioned():
    """What a node saves and a later node of the same run loads goes through a file: unversioned, a second run
    in the project overwrites it in between (records, read summary, preflight verdict, sweep analysis and
    status, ...). Versioned, ``ReadOwnWritesHooks`` pins each run to its own version."""
    from finetune_predictor.pipeline_registry import register_pipelines

    catalog = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())
    unversioned = set()
    for name, pipeline in register_pipelines().items():
        outputs = {output for node in pipeline.nodes for output in node.outputs}
        for dataset in sorted(outputs & {item for node in pipeline.nodes for item in node.inputs}):
            entry = _catalog_entry(catalog, dataset)
            if entry is None or "MemoryDataset" in str(entry.get("type")):
                continue
            if not (entry.get("versioned") or (entry.get("dataset") or {}).get("versioned")):
                unversioned.add(f"{dataset} ({name})")
    assert not unversioned, sorted(unversioned)
