"""A shared MLflow tracking server: sweeps, Ray workers, the predictor and ``kedro run`` over HTTP, and a server
that goes away mid-sweep.

Each test starts ``mlflow server`` on 127.0.0.1 (a free port, a temporary SQLite backend, proxied artifacts under
``--serve-artifacts``), points the project at it, and reads back through the server's REST API what reached it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from finetune_predictor import tracking
from finetune_predictor.pipelines.sensitivity import configuration_run, runner
from tests.conftest import copy_project
from tests.test_sweep import DATA, _settings, _sweep_data

MLFLOW = Path(sys.executable).with_name("mlflow")


class TrackingServer:
    """``mlflow server`` in its own process group, on one backend and artifact folder; stop and start again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backend, self.artifacts = root / "server.db", root / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> None:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        command = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{self.backend}", "--serve-artifacts",
                   "--artifacts-destination", str(self.artifacts)]
        log = (self.root / "server.log").open("ab")
        # Its own session: the server forks uvicorn workers, and stop() kills the whole group.
        self.process = subprocess.Popen(command, cwd=self.root, env=environment, stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):  # a loaded machine answers its first /health late
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server at {self.url} did not answer /health in {timeout_s:.0f} s")

    def stop(self) -> None:
        """Kill the server and its workers at once (SIGKILL: a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def rest(self, endpoint: str, **params) -> dict:
        """One GET of the server's REST API (``runs/search`` is a POST)."""
        if endpoint == "runs/search":
            response = requests.post(f"{self.url}/api/2.0/mlflow/runs/search", json=params, timeout=30)
        else:
            response = requests.get(f"{self.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """A running tracking server; the project's client pointed at it; the server killed whatever happens."""
    server = TrackingServer(tmp_path / "server")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a client that fell back to a local store would write mlruns/ or mlflow.db here
    monkeypatch.setenv("FINETUNE_PREDICTOR_CACHE", str(tmp_path / "cache"))
    try:
        server.start()
        mlflow.set_tracking_uri(server.url)
        yield server
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri("")
        mlflow.tracking.fluent._active_experiment_id = None
        server.stop()


def _sweep(tmp_path, model_dir, **overrides) -> runner.SweepOutcome:
    sensitivity, model, training, evaluation = _settings(tmp_path, model_dir, **overrides)
    sweep_data = _sweep_data(sensitivity["train_per_class"])
    return runner.run_sweep(sensitivity, sweep_data, DATA, model, {}, training, evaluation, sweep_name="test")


def _children(client: MlflowClient, parent_run_id: str) -> list:
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    return client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def _kedro_run(project: Path, *args: str, **env: str) -> tuple[int, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    result = subprocess.run([str(Path(sys.executable).with_name("kedro")), "run", *args], cwd=project,
                            capture_output=True, text=True, timeout=600,
                            env={**environment, "OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "true", **env})
    return result.returncode, result.stdout + result.stderr


def _no_local_store(*folders: Path) -> None:
    for folder in folders:
        assert not (folder / "mlruns").exists() and not (folder / "mlflow.db").exists(), folder


@pytest.fixture()
def gone_url():
    """A port bound here and never listened on: connections to it are refused, and no parallel worker's server can
    take it while the test runs (a probe socket closed at once left the port free for one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{probe.getsockname()[1]}"


PROBE = {"sample_size": 4, "probe_steps": 2, "knn": 2}


def test_a_ray_sweep_and_the_predictor_run_against_the_tracking_server(server, tiny_model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    mlflow.set_experiment(tracking.EXPERIMENT_NAME)
    try:
        with mlflow.start_run(run_name="sweep on the server") as parent:
            outcome = _sweep(tmp_path, tiny_model_dir, executor="ray",
                             meta_features={**PROBE, "cache_dir": str(tmp_path / "mf-cache")})
        # A run asking for GPUs the cluster does not have is refused before any task waits for ever.
        more_gpus = int(ray.cluster_resources().get("GPU", 0)) + 1
        with pytest.raises(ValueError, match=f"gpus_per_run={more_gpus} but the Ray cluster at local has"):
            _sweep(tmp_path, tiny_model_dir, executor="ray", gpus_per_run=more_gpus, seeds=[7])
    finally:
        ray.shutdown()
    assert outcome.status["ran"] == 2 and outcome.status["failed"] == 0, outcome.status
    client = MlflowClient(server.url)
    children = _children(client, parent.info.run_id)
    assert sorted(run.info.status for run in children) == ["FINISHED", "FINISHED"]
    for run in children:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        assert {f.path for f in client.list_artifacts(run.info.run_id, "adapter")} >= {
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"}
        assert {f.path for f in client.list_artifacts(run.info.run_id, "predictions")} == {
            "predictions/baseline_predictions.jsonl", "predictions/finetuned_predictions.jsonl"}
        # Proxied: the files sit in the server's artifact folder, under the run's id.
        assert list(server.artifacts.rglob(f"{run.info.run_id}/artifacts/adapter/adapter_model.safetensors"))
    _no_local_store(Path.cwd(), tmp_path)

    # Resumed over HTTP: a second seed of both configurations reuses the two finished runs, and its baseline
    # predictions are downloaded from the server's artifacts instead of being computed again.
    with mlflow.start_run(run_name="second seed"):
        seeds = _sweep(tmp_path, tiny_model_dir, seeds=[1, 2],
                       meta_features={**PROBE, "cache_dir": str(tmp_path / "mf-cache")})
    assert seeds.status["reused"] == 2 and seeds.status["ran"] == 2, seeds.status
    first_ids = {run.info.run_id for run in children}
    for run in client.search_runs([parent.info.experiment_id], "params.seed = '2'"):
        assert run.data.params[tracking.BASELINE_REUSED] == "true"
        assert run.data.params[tracking.BASELINE_SOURCE] in first_ids

    # The predictor, as `kedro run` runs it in a fresh project copy, finds the server by MLFLOW_TRACKING_URI alone.
    project = copy_project(tmp_path / "project", with_source=False)
    (project / "conf" / "local" / "parameters_predictor.yml").write_text(
        "predictor:\n  n_folds: 2\n  min_runs: 4\n  candidates: [ridge_cv]\n")
    code, output = _kedro_run(project, "--pipeline=predictor", MLFLOW_TRACKING_URI=server.url)
    assert code == 0, output[-4000:]
    assert "Runs: 4." in output
    assert f"{server.url}/#/experiments/" in output  # the run's link opens the server's UI, not a local mlflow ui
    predictor_runs = client.search_runs([parent.info.experiment_id], "attributes.run_name != ''",
                                        order_by=["attributes.start_time DESC"], max_results=1)
    artifacts = {f.path for f in client.list_artifacts(predictor_runs[0].info.run_id)}
    assert "runs_table.csv" in artifacts and "predictor" in artifacts, artifacts
    assert "card.json" in {Path(f.path).name for f in client.list_artifacts(predictor_runs[0].info.run_id,
                                                                             "predictor")}
    # `predict` on a candidate (its meta-features with probes, then the saved predictor) logs to the server too.
    (project / "conf" / "local" / "parameters_tiny.yml").write_text(f"""
model: {{name: "{tiny_model_dir}", max_length: 256}}
data: {{train_per_class: 4, test_per_class: 3, synthetic: {{num_records: 120}}}}
training: {{per_device_train_batch_size: 4, precision: fp32, warmup_ratio: 0.0}}
meta_features: {{sample_size: 4, probe_steps: 2, knn: 2, cache_dir: "{tmp_path / 'mf-cache'}"}}
""")
    code, output = _kedro_run(project, "--pipeline=predict", MLFLOW_TRACKING_URI=server.url)
    assert code == 0, output[-4000:]
    assert "Predicted finetuned_primary" in output, output[-3000:]
    (predict_run,) = client.search_runs([parent.info.experiment_id], "attributes.status = 'FINISHED'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
    assert "prediction.json" in {f.path for f in client.list_artifacts(predict_run.info.run_id)}
    _no_local_store(project)
    # Through the REST API itself: the two sweep parents, four configurations, the predictor and predict runs.
    found = server.rest("runs/search", experiment_ids=[parent.info.experiment_id], max_results=100)["runs"]
    assert len(found) == 2 + 4 + 2
    nested = [run for run in found if any(tag["key"] == "mlflow.parentRunId" for tag in run["data"].get("tags", []))]
    assert len(nested) == 4


# --- the server goes away mid-sweep -----------------------------------------------------------------------------


def _fine_tune_then(action, on_call: int, before: bool, monkeypatch) -> dict:
    """Wrap a configuration's fine-tune: ``action()`` runs before (or after) its ``on_call``-th call, i.e. while that
    configuration is in flight: its run exists on the server, its record is not logged yet."""
    original, calls = configuration_run.fine_tune, {"n": 0, "at": None}

    def fine_tune(*args, **kwargs):
        calls["n"] += 1
        if before and calls["n"] == on_call:
            calls["at"] = time.monotonic()
            action()
        result = original(*args, **kwargs)
        if not before and calls["n"] == on_call:
            calls["at"] = time.monotonic()
            action()
        return result

    monkeypatch.setattr(configuration_run, "fine_tune", fine_tune)
    return calls


def _runs_by_key(client: MlflowClient, experiment_id: str) -> dict[str, list]:
    by_key: dict[str, list] = {}
    for run in client.search_runs([experiment_id], max_results=200):
        if tracking.CONFIG_KEY_TAG in run.data.tags:
            by_key.setdefault(run.data.tags[tracking.CONFIG_KEY_TAG], []).append(run)
    return by_key


def test_server_killed_mid_sweep_fails_clearly_and_a_rerun_resumes(server, tiny_model_dir, tmp_path, monkeypatch,
                                                                     caplog, request):
    from tests.reliability import record_fault

    # Few, fast retries: the test is about what happens once MLflow gives up (the project's defaults wait longer).
    for name, value in (("MAX_RETRIES", "1"), ("BACKOFF_FACTOR", "0"), ("TIMEOUT", "10")):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", value)
    experiment_id = mlflow.set_experiment(tracking.EXPERIMENT_NAME).experiment_id
    fine_tune = configuration_run.fine_tune
    calls = _fine_tune_then(server.stop, on_call=2, before=True, monkeypatch=monkeypatch)
    lost_parent = mlflow.start_run(run_name="sweep that loses its server")
    with pytest.raises(tracking.TrackingServerUnavailableError) as failure:
        _sweep(tmp_path, tiny_model_dir)
    waited = time.monotonic() - calls["at"]
    with pytest.raises(Exception):  # noqa: B017 (the parent cannot be ended either; MLflow still pops it)
        mlflow.end_run("FAILED")
    assert mlflow.active_run() is None
    # One message, naming the server, the configuration in flight and how to resume; no per-run error logged.
    message = failure.value.render()
    assert server.url in message and "n=8 lr=5e-02" in message and "re-run the same command" in message
    assert "Connection refused" in message
    assert not [r for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("finetune_predictor")]
    assert waited < 120, waited  # bounded: training the tiny configuration and two failed requests, not minutes

    # The server back on the same backend and artifacts: the re-run reuses the first, retries the second.
    server.start()
    monkeypatch.setattr(configuration_run, "fine_tune", fine_tune)
    with mlflow.start_run(run_name="the same sweep, resumed"):
        again = _sweep(tmp_path, tiny_model_dir)
    assert again.status["reused"] == 1 and again.status["ran"] == 1 and again.status["failed"] == 0, again.status
    assert again.status["interrupted_marked_failed"] == 1
    client = MlflowClient(server.url)
    by_key = _runs_by_key(client, experiment_id)
    assert len(by_key) == 2
    finished = {key: [run for run in runs if run.info.status == "FINISHED"] for key, runs in by_key.items()}
    assert all(len(runs) == 1 for runs in finished.values()), finished
    (first,) = next(runs for runs in finished.values() if runs[0].data.params["train_per_class"] == "2")
    (second,) = next(runs for runs in finished.values() if runs[0].data.params["train_per_class"] == "4")
    assert first.data.tags["mlflow.parentRunId"] == lost_parent.info.run_id  # the finished one was kept
    interrupted = [run for runs in by_key.values() for run in runs if run.info.status == "FAILED"]
    assert len(interrupted) == 1 and interrupted[0].data.tags["run_failure"].startswith("interrupted")
    # Its baseline came back from the server's artifacts, computed by the run that finished before the loss.
    assert second.data.params[tracking.BASELINE_REUSED] == "true"
    assert second.data.params[tracking.BASELINE_SOURCE] == first.info.run_id
    assert client.get_run(lost_parent.info.run_id).info.status == "FAILED"
    assert not client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    record_fault(request.node.name, fault="tracking server killed mid-sweep",
                 injected="SIGKILL to `mlflow server` while the second of two configurations trains; restarted on "
                          "the same SQLite backend and artifact folder, same command again",
                 outcome="failed clearly (one TrackingServerUnavailableError naming the server, the configuration "
                         "and how to resume); resumed: finished configuration reused, the one in flight retried",
                 lost="nothing finished; the run in flight is marked FAILED at the re-run, one FINISHED run per "
                      "configuration",
                 time_lost="1 of 2 configurations run again (the one in flight, its fine-tune from its last "
                           "checkpoint); its baseline reused from the server")


def test_server_restarted_within_the_retry_window_loses_nothing(server, tiny_model_dir, tmp_path, monkeypatch,
                                                                 caplog, request):
    """The server is killed as a configuration finishes training and is back a few seconds later: MLflow's
    back-off carries the run's record over the gap, and the sweep goes on as if nothing happened."""
    import threading

    from tests.reliability import record_fault

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")  # 0 + 4 + 8 + ... + 64 s: a restart fits
    experiment_id = mlflow.set_experiment(tracking.EXPERIMENT_NAME).experiment_id
    restarted = threading.Event()

    def restart_soon() -> None:
        server.stop()

        def start() -> None:
            time.sleep(3)
            server.start()
            restarted.set()

        threading.Thread(target=start, daemon=True).start()

    _fine_tune_then(restart_soon, on_call=1, before=False, monkeypatch=monkeypatch)
    with caplog.at_level("WARNING", logger="urllib3"), mlflow.start_run(run_name="sweep across a restart"):
        outcome = _sweep(tmp_path, tiny_model_dir)
    assert restarted.is_set()
    assert outcome.status["ran"] == 2 and outcome.status["failed"] == 0, outcome.status
    assert any("Retrying" in record.getMessage() for record in caplog.records)  # the record waited for the server
    by_key = _runs_by_key(MlflowClient(server.url), experiment_id)
    assert sorted(run.info.status for runs in by_key.values() for run in runs) == ["FINISHED", "FINISHED"]
    assert all("finetuned_primary" in runs[0].data.metrics for runs in by_key.values())
    record_fault(request.node.name, fault="tracking server restarted mid-sweep",
                 injected="SIGKILL to `mlflow server` as the first of two configurations finishes training; the "
                          "server started again 3 s later on the same backend",
                 outcome="retried: MLflow's back-off held the run's record until the server answered; the sweep "
                         "went on",
                 lost="nothing", time_lost="the restart's seconds, nothing re-run")


# --- choosing the server, and the project's retry defaults ------------------------------------------------------


def test_mlflow_tracking_uri_chooses_the_server_unless_the_env_names_its_own(monkeypatch, tmp_path):
    """conf/base/mlflow.yml used to name sqlite:///mlflow.db outright: kedro-mlflow then ignored
    MLFLOW_TRACKING_URI, and every machine wrote to its own file."""
    from kedro.config import OmegaConfigLoader

    from finetune_predictor import settings
    from tests.conftest import PROJECT_ROOT

    def uri(conf: Path, env: str = "base") -> str:
        loader = OmegaConfigLoader(str(conf), **{**settings.CONFIG_LOADER_ARGS, "default_run_env": env}, env=env)
        return loader["mlflow"]["server"]["mlflow_tracking_uri"]

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert uri(PROJECT_ROOT / "conf") == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.internal:5000")
    assert uri(PROJECT_ROOT / "conf") == "http://tracking.internal:5000"
    # A conf/<env>/mlflow.yml that names a server wins over the variable.
    conf = copy_project(tmp_path / "project", with_source=False) / "conf"
    (conf / "shared").mkdir()
    (conf / "shared" / "mlflow.yml").write_text((conf / "base" / "mlflow.yml").read_text().replace(
        "\"${tracking_uri_or:'sqlite:///mlflow.db'}\"", "http://team-server:5000"))
    assert uri(conf, "shared") == "http://team-server:5000"


def test_http_retry_defaults_are_bounded_and_yield_to_the_user(monkeypatch):
    for name in tracking.HTTP_REQUEST_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    tracking.use_http_request_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the user's own value stays
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"
    # urllib3's back-off: none before the first retry, then factor * 2^(n-1); MLflow's defaults wait ~4 minutes.
    retries, factor = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), int(
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    assert sum(factor * 2 ** (n - 1) for n in range(2, retries + 1)) <= 30


def test_a_failed_kedro_run_keeps_its_own_error_when_the_server_is_gone(monkeypatch, caplog, gone_url):
    """Ending the kedro run FAILED needs the server too: its connection error used to replace the run's own."""
    from finetune_predictor.tracking.lifecycle import RunLifecycleHook

    gone = gone_url
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(gone)
    try:
        hook = RunLifecycleHook()
        hook.run_id, hook._already_active_mlflow = "0" * 32, False
        with caplog.at_level(logging.DEBUG, logger="finetune_predictor"):
            hook.on_pipeline_error(RuntimeError("the node's own error"), {}, None, None)
            assert [r.levelname for r in caplog.records if "is left RUNNING" in r.message] == ["WARNING"]
            caplog.clear()
            # The run's own error is the lost server: its message says so already, so the hook adds no second one
            # (`kedro run` printed "did not answer" twice).
            hook.run_id = "1" * 32
            try:
                raise tracking.TrackingServerUnavailableError("did not answer", fix="start it") from \
                    requests.ConnectionError("refused")
            except tracking.TrackingServerUnavailableError as lost:
                hook.on_pipeline_error(lost, {}, None, None)
            assert [r.levelname for r in caplog.records if "is left RUNNING" in r.message] == ["INFO"]
    finally:
        mlflow.set_tracking_uri("")
    assert not tracking.server_unreachable(ValueError("a bug"))  # any other error of the hook is not hidden


def _lose_the_server(config, *args):
    if config == "in flight":
        raise tracking.TrackingServerUnavailableError("The MLflow tracking server at http://x did not answer",
                                                      fix="start it again")
    return {"run_id": config}


def test_a_ray_sweep_that_loses_the_server_raises_the_one_message(monkeypatch):
    """On Ray the error comes back wrapped in Ray's own (``RayTaskError.as_instanceof_cause``, what ``ray.get``
    raises for a task that failed): it is still the project's error, with its remedy, and the sweep stops with it
    after every task in flight ended (it used to be logged as one failed configuration and the sweep went on).
    Ray's own exception class without a cluster: the real cluster runs in the sweep test above."""
    from types import SimpleNamespace

    ray = pytest.importorskip("ray")
    from ray.exceptions import RayTaskError

    awaited = []

    def fake_get(ref):
        config, _result = ref
        awaited.append(config)
        try:
            return _lose_the_server(config)
        except tracking.TrackingServerUnavailableError as cause:
            cause = pickle.loads(pickle.dumps(cause))  # what a worker's error is after crossing to the driver
            raise RayTaskError("run_configuration", "Traceback ...", cause).as_instanceof_cause() from None

    class FakeTask:
        def remote(self, *job):
            return job[0], None

    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "remote", lambda **kwargs: lambda function: FakeTask())
    monkeypatch.setattr(ray, "get", fake_get)
    context = SimpleNamespace(run_name=str)
    with pytest.raises(tracking.TrackingServerUnavailableError) as failure:
        runner.execute_ray([("finished",), ("in flight",), ("also finished",)], {"gpus_per_run": 0}, context)
    assert failure.value.fix == "start it again" and "did not answer" in failure.value.render()
    assert awaited == ["finished", "in flight", "also finished"]  # every task in flight ended before the raise


def _sweep_project(tmp_path: Path, model_dir: Path) -> Path:
    """A fresh project copy whose sensitivity sweep is three tiny configurations on the tiny Llama."""
    project = copy_project(tmp_path / "project", with_source=False)
    (project / "conf" / "local" / "parameters_tiny.yml").write_text(f"""
model: {{name: "{model_dir}", max_length: 256}}
data: {{train_per_class: 6, test_per_class: 3, synthetic: {{num_records: 160}}}}
training: {{per_device_train_batch_size: 4, precision: fp32, warmup_ratio: 0.0}}
evaluation: {{batch_size: 8, generation: false, engine: hf}}
sensitivity:
  executor: sequential
  gpus_per_run: 0
  models: ["{model_dir}"]
  train_per_class: [2, 4, 6]
  learning_rates: [0.05]
  lora: [{{r: 2, alpha: 4, dropout: 0.0}}]
  num_train_epochs: [1]
  seeds: [1]
  test_per_class: 3
  validation_per_class: 2
  meta_features: null
""")
    return project


def _configuration_runs(server: TrackingServer, status: str) -> list[dict]:
    try:
        runs = server.rest("runs/search", experiment_ids=["1"], filter=f"tags.{tracking.CONFIG_KEY_TAG} LIKE '%' "
                           f"and attributes.status = '{status}'", max_results=100).get("runs", [])
    except requests.RequestException:
        return []
    return runs


def _one_finished_and_the_next_in_flight(server: TrackingServer) -> bool:
    """A configuration FINISHED and the next one's run open (RUNNING) on the server. Stopping the server on the
    first condition alone raced the sweep: between two configurations there is no run in flight, so nothing was
    interrupted and the resumed sweep had no FAILED run to show (the test failed about every other time)."""
    return bool(_configuration_runs(server, "FINISHED")) and bool(_configuration_runs(server, "RUNNING"))


def test_kedro_run_of_a_sweep_that_loses_its_server_ends_with_one_message(server, tiny_model_dir, tmp_path,
                                                                          request):
    """The same fault through `kedro run`: exit status 1 and the one block (closing the kedro run's own MLflow run
    on the lost server used to replace it with MLflow's connection error), then the same command resumes."""
    from tests.reliability import record_fault

    project = _sweep_project(tmp_path, tiny_model_dir)
    kedro = [str(Path(sys.executable).with_name("kedro")), "run", "--pipeline=sensitivity"]
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "OMP_NUM_THREADS": "1",
                   "MLFLOW_TRACKING_URI": server.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    log = (tmp_path / "first.log").open("w+")
    process = subprocess.Popen(kedro, cwd=project, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while (not _one_finished_and_the_next_in_flight(server) and process.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.2)
        server.stop()
        code = process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    output = log.read()
    assert code == 1, output[-4000:]
    assert output.count("did not answer") == 1 and "re-run the same command" in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]

    server.start()
    again = subprocess.run(kedro, cwd=project, env=environment, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    saved = project / "data/08_reporting/sensitivity/sweep_status.json"
    if saved.is_dir():  # versioned: the latest save
        saved = max(saved.glob("*/sweep_status.json"))
    status = json.loads(saved.read_text())
    assert status["reused"] >= 1 and status["reused"] + status["ran"] == 3 and status["failed"] == 0, status
    client = MlflowClient(server.url)
    by_key = _runs_by_key(client, "1")
    assert len(by_key) == 3
    assert all(sum(run.info.status == "FINISHED" for run in runs) == 1 for runs in by_key.values())
    # The run in flight was found RUNNING with its dead process (the kedro run's start marks such runs of this
    # host FAILED before the sweep looks); so was the first kedro run's own.
    (interrupted,) = [run for runs in by_key.values() for run in runs if run.info.status == "FAILED"]
    assert interrupted.data.tags["run_failure"].startswith("interrupted")
    assert not client.search_runs(["1"], "attributes.status = 'RUNNING'")
    _no_local_store(project)
    record_fault(request.node.name, fault="tracking server killed mid-sweep (`kedro run`)",
                 injected="SIGKILL to `mlflow server` once the first of three configurations is FINISHED on it; "
                          "restarted, `kedro run --pipeline=sensitivity` again",
                 outcome="failed clearly (exit status 1, one block, no traceback); resumed: finished configurations "
                         "reused, the one in flight retried",
                 lost="nothing finished; one FINISHED run per configuration",
                 time_lost=f"{status['ran']} of 3 configurations run after the restart (the one in flight, from its "
                           "last checkpoint, and those not started)")


def test_a_kedro_run_against_a_server_that_is_not_there_is_one_block(tmp_path, request, gone_url):
    """kedro-mlflow opens the store as the session starts: MLflow's connection error was a 500-line traceback."""
    from tests.reliability import record_fault

    gone = gone_url
    project = copy_project(tmp_path / "project", with_source=False)
    code, output = _kedro_run(project, "--pipeline=predictor", MLFLOW_TRACKING_URI=gone,
                              MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    assert code == 1, output[-3000:]
    assert f"The MLflow tracking server at {gone} did not answer (Connection refused)" in " ".join(output.split())
    assert "Traceback" not in output and output.count("finetune-predictor:") == 1, output[-3000:]
    _no_local_store(project)
    record_fault(request.node.name, fault="tracking server not running when a run starts",
                 injected="MLFLOW_TRACKING_URI names a port nobody listens on; `kedro run --pipeline=predictor`",
                 outcome="refused: exit status 1, one block naming the server and the fix, nothing written",
                 lost="nothing", time_lost="none (stops before any node)")


def test_run_links_open_the_tracking_servers_own_ui_without_credentials():
    """The run line and the "compare runs" hint pointed at a local `mlflow ui` on 127.0.0.1:5000 whatever the store."""
    assert tracking.tracking_server_url("sqlite:///mlflow.db") is None
    assert tracking.tracking_server_url("http://alice:s3cret@tracking.internal:5000/") == "http://tracking.internal:5000"
    assert tracking.tracking_server_url("https://mlflow.example.org/team") == "https://mlflow.example.org/team"
    link = tracking.ui_url("3", "abc", server="http://tracking.internal:5000")
    assert link == "http://tracking.internal:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert tracking.ui_url("3").startswith("http://127.0.0.1:5000/#/experiments/3/runs")
