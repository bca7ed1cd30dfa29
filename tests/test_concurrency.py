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
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from finetune_predictor import tracking
from finetune_predictor.data import task_data
from finetune_predictor.data.records import content_sha256
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
           tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """``kedro run --pipeline=mini_test100`` (or ``args``) in the background, held after saving ``pause_after``;
    returns it, its paused flag and its resume flag."""
    script = tmp_path / "kedro_with_pause.py"
    script.write_text(KEDRO_WITH_PAUSE)
    paused, resume = tmp_path / f"{name}.paused", tmp_path / f"{name}.resume"
    extra = ",".join(f"{key}={value}" for key, value in settings.items())
    environment = {**os.environ, **QUIET, "FINETUNE_PREDICTOR_CACHE": str(cache),
                   "PAUSE_AFTER_SAVING": pause_after or "", "PAUSED_FLAG": str(paused), "RESUME_FLAG": str(resume)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen([sys.executable, str(script), "run", *(args or ["--pipeline=mini_test100"]),
                                "--params", f"model.name={model_dir},{COMMON},{extra}".rstrip(",")],
                               cwd=project, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True)
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


# --- two sweeps on one store ------------------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _running(experiment_id: str, key: str | None, pid: int, host: str | None = None, parent: str | None = None):
    tags = {tracking.HOST_TAG: host or socket.gethostname(), tracking.PID_TAG: str(pid)}
    tags.update({tracking.CONFIG_KEY_TAG: key} if key else {})
    tags.update({"mlflow.parentRunId": parent} if parent else {})
    return mlflow.tracking.MlflowClient().create_run(experiment_id, tags=tags)


def test_a_second_sweep_leaves_the_runs_of_a_live_sweep_alone(store, request):
    """A sweep starting beside a running one marked its RUNNING configuration run FAILED, and that sweep's parent
    run with it. Only runs whose process is gone are interrupted runs."""
    client = mlflow.tracking.MlflowClient()
    live_parent = _running(store, None, os.getpid())
    live = _running(store, "k1", os.getpid(), parent=live_parent.info.run_id)
    # A Ray worker of the live sweep on another machine (this host cannot see its process, only its parent's).
    remote = _running(store, "k2", 4242, host="elsewhere", parent=live_parent.info.run_id)
    dead_parent = _running(store, None, _dead_pid())
    dead = _running(store, "k3", _dead_pid(), parent=dead_parent.info.run_id)
    orphan = _running(store, "k4", 4242, host="elsewhere", parent=dead_parent.info.run_id)
    marked = sum(tracking.mark_interrupted_runs_failed(store, key) for key in ("k1", "k2", "k3", "k4"))
    status = {run.info.run_id: client.get_run(run.info.run_id).info.status
              for run in (live_parent, live, remote, dead_parent, dead, orphan)}
    assert marked == 2
    assert [status[run.info.run_id] for run in (live_parent, live, remote)] == ["RUNNING"] * 3
    assert [status[run.info.run_id] for run in (dead_parent, dead, orphan)] == ["FAILED"] * 3
    record_fault(request.node.name, fault="a second sweep starts while a first one runs on the same store",
                 injected="RUNNING configuration runs of a live process (and of its Ray worker on another host) "
                          "beside those of a dead one", outcome="isolated: the live sweep's runs stay RUNNING; "
                          "only the dead process's runs are marked FAILED", lost="nothing", time_lost="none")


def test_a_configuration_is_run_by_one_process_at_a_time(store, tmp_path, request):
    """The file lock keeps a second process of this machine out; a FINISHED run, or a live run opened first
    (another machine's), keeps it out too, and a run opened second ends KILLED, naming the first."""
    client = mlflow.tracking.MlflowClient()
    claimed = pytest.raises(tracking.ConfigurationClaimedError, match="on this machine")
    claim = tracking.configuration_claim
    with claim(store, "k1", tmp_path), claimed, claim(store, "k1", tmp_path):
        pass
    with tracking.configuration_claim(store, "k1", tmp_path):  # released: free again
        pass
    first = _running(store, "k2", 4242, host="elsewhere")  # another machine's live run (no parent: alive)
    claimed = pytest.raises(tracking.ConfigurationClaimedError, match=first.info.run_id)
    with claimed, tracking.configuration_claim(store, "k2", tmp_path):
        pass
    # Two machines passed the lock at once: the run opened second gives way.
    mlflow.set_experiment(tracking.EXPERIMENT_NAME)
    claimed = pytest.raises(tracking.ConfigurationClaimedError, match="superseded")
    with claimed, tracking.child_run(store, None, "second", {tracking.CONFIG_KEY_TAG: "k2"}) as run_id:
        tracking.refuse_if_claimed_first(store, "k2", run_id)
    second = client.get_run(run_id)
    assert second.info.status == "KILLED" and first.info.run_id in second.data.tags["run_failure"]
    assert client.get_run(first.info.run_id).info.status == "RUNNING" and mlflow.active_run() is None
    record_fault(request.node.name, fault="two processes start the same sweep configuration",
                 injected="a held claim (lock file), a live run of another machine, a run opened second",
                 outcome="isolated: one run per configuration; the second process ends its run KILLED "
                         "(superseded) and waits for the first", lost="nothing", time_lost="none")


def test_the_runs_table_counts_one_run_per_configuration_key(store):
    client = mlflow.tracking.MlflowClient()
    for value, tags in ((0.6, {tracking.CONFIG_KEY_TAG: "k1"}), (0.7, {tracking.CONFIG_KEY_TAG: "k1"}),
                        (0.8, {tracking.CONFIG_KEY_TAG: "k2"}), (0.9, {})):
        run = client.create_run(store, tags=tags)
        client.log_metric(run.info.run_id, "finetuned_primary", value)
        client.set_terminated(run.info.run_id, "FINISHED")
        time.sleep(0.01)
    table = tracking.runs_table()
    assert sorted(table["finetuned_primary"]) == [0.7, 0.8, 0.9]  # k1's last to finish; the unkeyed run kept


SWEEP = """sensitivity:
  models: [{model}]
  train_per_class: {sizes}
  learning_rates: [0.05]
  lora: [{{r: 2, alpha: 4, dropout: 0.0}}]
  num_train_epochs: [1]
  seeds: [1]
  test_per_class: 3
  validation_per_class: 2
  gpus_per_run: 0
  evaluation_batch_size: 8
  meta_features: null
"""


def _sweep_runs(project: Path) -> tuple[list, list]:
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    return parents, [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def test_two_sweeps_at_once_with_overlapping_configurations_run_each_once(tmp_path, tiny_model_dir, request,
                                                                          monkeypatch):
    """Sweeps A (sizes 2, 3) and B (sizes 2, 4) on one store and one output folder, both held before their sweep
    node and let go together, so both come to size 2 at once: it is trained once, the other sweep waits for it
    (training its own size meanwhile), and both reports hold it. Before, both trained it (two FINISHED runs of
    one configuration) and the later sweep marked the earlier one's RUNNING run, and its parent, FAILED."""
    project = copy_project(tmp_path / "project")
    for name, sizes in (("sweep_a", "[2, 3]"), ("sweep_b", "[2, 4]")):
        (project / "conf" / name).mkdir()
        (project / "conf" / name / "parameters_sensitivity.yml").write_text(SWEEP.format(model=tiny_model_dir,
                                                                                          sizes=sizes))
    common = {"data.synthetic.num_records": 120, "data.train_per_class": 4, "data.test_per_class": 3}
    processes = {}
    for name in ("sweep_a", "sweep_b"):
        processes[name] = _start(project, name, common, tiny_model_dir, tmp_path / "cache",
                                 "sensitivity.reporting.split_summary", tmp_path, "--pipeline=sensitivity",
                                 f"--env={name}")
    try:
        for name, (process, paused, _resume) in processes.items():
            _wait_for(paused, process, tmp_path / f"{name}.log")
        for _process, _paused, resume in processes.values():
            resume.touch()
        for name, (process, _paused, _resume) in processes.items():
            _finish(process, tmp_path / f"{name}.log")
    finally:
        for process, _paused, _resume in processes.values():
            if process.poll() is None:
                process.kill()
    parents, children = _sweep_runs(project)
    assert sorted(run.info.status for run in parents) == ["FINISHED", "FINISHED"]
    finished = [run for run in children if run.info.status == "FINISHED"]
    keys = [run.data.tags[tracking.CONFIG_KEY_TAG] for run in finished]
    assert len(keys) == len(set(keys)) == 3, keys  # sizes 2, 3, 4: each trained once
    others = [run for run in children if run.info.status != "FINISHED"]
    assert all(run.info.status == "KILLED" and tracking.CLAIMED in run.data.tags["run_failure"] for run in others)
    # Each sweep's results hold its two configurations, the shared one as the one run both read.
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    results = {}
    for parent in parents:
        local = client.download_artifacts(parent.info.run_id, "experiment_summary.jsonl")
        results[parent.data.params["sensitivity.train_per_class"]] = pd.read_json(local, lines=True)
    a, b = results["2,3"], results["2,4"]
    assert sorted(a["train_per_class"]) == [2, 3] and sorted(b["train_per_class"]) == [2, 4]
    shared_a, shared_b = (frame.set_index("train_per_class").loc[2] for frame in (a, b))
    assert shared_a["run_id"] == shared_b["run_id"] and shared_a["config_key"] == shared_b["config_key"]
    # One sweep trained both its configurations; the other trained its own and waited for the shared one.
    statuses = [json.loads(path.read_text())
                for path in project.glob("data/08_reporting/sensitivity/sweep_status.json/*/sweep_status.json")]
    assert sorted((status["ran"], status.get("finished_elsewhere", 0), status["failed"]) for status in statuses) == [
        (1, 1, 0), (2, 0, 0)]
    monkeypatch.chdir(project)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        assert len(tracking.runs_table()) == 3
    finally:
        mlflow.set_tracking_uri("")
    record_fault(request.node.name, fault="two sweeps at once on one store with overlapping configurations",
                 injected="both held before their sweep node and released together, so both reach the shared "
                          "configuration at once", outcome="isolated: the shared configuration is trained once; "
                          "the other sweep trains its own meanwhile, then waits and reads the same run",
                 lost="nothing", time_lost="none: no configuration trained twice")


def test_two_runs_logging_the_same_data_set_at_once_both_get_it(store, monkeypatch, request):
    """MLflow looks a data set up, then inserts it: two runs logging the same one at the same moment (same data,
    started together) made the second insert fail on the store's unique key and ended that run. The collision
    is injected as it happens: the other run's insert lands between this run's lookup and insert."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mine, other = (client.create_run(store).info.run_id for _ in range(2))
    frame = pd.DataFrame({"id": ["1", "2"], "output": ["fake", "legitimate"]})
    real, collided = MlflowClient.log_inputs, []

    def colliding(self, run_id, datasets=None, models=None):
        if not collided:
            collided.append(run_id)
            real(self, other, datasets)  # the other process wins the insert
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(self, run_id, datasets, models)

    monkeypatch.setattr(MlflowClient, "log_inputs", colliding)
    tracking.log_dataset(mine, frame, "bundled-synthetic-news", "test", "test", digest="ab" * 32)
    digests = {run_id: [d.dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs]
               for run_id in (mine, other)}
    assert collided and digests == {mine: ["ab" * 8], other: ["ab" * 8]}
    record_fault(request.node.name, fault="two runs log the same data set at the same moment",
                 injected="the other run's insert of the data set lands between this run's lookup and insert "
                          "(the store's UNIQUE constraint fails)",
                 outcome="retried: the data set is linked to both runs", lost="nothing", time_lost="none")


@pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method:UserWarning")  # kedro-mlflow's import
def test_runs_started_together_open_a_new_store_one_after_the_other(tmp_path, monkeypatch, request):
    """Two runs starting together on a new SQLite store both created its tables, and one stopped with
    ``duplicate column name: step`` (seen in the side-by-side test above before the fix): kedro-mlflow's opening
    of the store (and creating the experiment) happens under a machine-wide lock."""
    from filelock import FileLock, Timeout
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

    from finetune_predictor.tracking.lifecycle import RunLifecycleHook

    monkeypatch.setenv("FINETUNE_PREDICTOR_CACHE", str(tmp_path))
    held = []

    def opens_the_store(self, context):
        with pytest.raises(Timeout):  # what a second process starting now meets: it waits
            FileLock(tracking.store_setup_lock().lock_file, timeout=0).acquire()
        held.append(context)

    monkeypatch.setattr(MlflowHook, "after_context_created", opens_the_store)
    RunLifecycleHook().after_context_created(context="context")
    assert held == ["context"]
    FileLock(tracking.store_setup_lock().lock_file, timeout=0).acquire()  # released afterwards
    record_fault(request.node.name, fault="two runs start together on a new SQLite store",
                 injected="both processes started at once (the side-by-side test); here: the store opened while "
                          "another process would try", outcome="isolated: the second waits for the lock, then "
                          "finds the tables made", lost="nothing", time_lost="none")


def test_a_sweep_waits_for_another_machines_configuration_only_so_long(store, monkeypatch, request):
    """A run of another host whose parent cannot be shown dead counts as alive (this host cannot see its
    process): a sweep restarted on a new host (a new container) found its own dead runs "alive" and waited for
    ever. It now waits ``sensitivity.wait_for_others_h`` and stops with one error naming the runs and the fix."""
    from types import SimpleNamespace

    from finetune_predictor.errors import UserFacingError
    from finetune_predictor.pipelines.sensitivity import runner
    from finetune_predictor.pipelines.sensitivity.grid import expand_grid

    monkeypatch.setattr(runner, "CLAIM_POLL_S", 0.05)
    config = expand_grid({"train_per_class": [2], "learning_rates": [3e-4], "seeds": [1]}, "m")[0]
    stale = _running(store, "k-stale", 4242, host="an-old-container")
    context = SimpleNamespace(experiment_id=store, sweep_name="s", run_name=lambda c: "n=4 lr=3e-04",
                              wait_for_others_s=0.3)
    started = time.monotonic()
    with pytest.raises(runner.OtherSweepTooSlowError) as error:
        runner.await_elsewhere([config], {config: "k-stale"}, context, {})
    assert time.monotonic() - started < 5
    assert isinstance(error.value, UserFacingError) and stale.info.run_id in error.value.where
    assert "FAILED" in error.value.fix and "wait_for_others_h" in error.value.fix
    record_fault(request.node.name, fault="a sweep waits on a configuration whose machine is gone",
                 injected="a RUNNING run of another host (no process this host can check), never finished",
                 outcome="failed clearly after sensitivity.wait_for_others_h: one block naming the runs and the fix",
                 lost="nothing: every configuration this sweep finished is kept",
                 time_lost="at most wait_for_others_h (12 h by default) of waiting")



def test_two_sessions_in_one_millisecond_get_two_save_versions(tmp_path, monkeypatch):
    """A session's id is the save version of everything it writes: two `kedro run` of one project started in the
    same millisecond shared it, and the second's first save failed ("must not exist if versioning is enabled").
    The project's settings make Kedro take ids from a ledger that never gives one out twice."""
    import inspect

    import kedro.io.core
    from kedro.framework.session import session

    import finetune_predictor.settings  # noqa: F401  (installs the ids, as `kedro run` does on start)
    from finetune_predictor import session_ids

    # KedroSession.create still makes its id by this name, and the name is the project's.
    assert "generate_timestamp()" in inspect.getsource(session.KedroSession.create)
    assert session.generate_timestamp is session_ids.unique_timestamp
    monkeypatch.setenv("FINETUNE_PREDICTOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kedro.io.core, "generate_timestamp", lambda: "2026-12-08T10.00.00.999Z")  # a frozen clock
    assert [session.generate_timestamp(), session.generate_timestamp()] == [
        "2026-12-08T10.00.00.999Z", "2026-12-08T10.00.01.000Z"]
    # A clock set back behind the ledger still gets a later id; a ledger that cannot be written costs nothing.
    monkeypatch.setattr(kedro.io.core, "generate_timestamp", lambda: "2026-12-08T09.00.00.000Z")
    assert session.generate_timestamp() == "2026-12-08T10.00.01.001Z"
    (tmp_path / "a-file").write_text("")
    assert session_ids.unique_timestamp(tmp_path / "a-file" / "ids") == "2026-12-08T09.00.00.000Z"
