"""Secrets (issue 17): credentials in the environment (``HF_TOKEN``, ``MLFLOW_TRACKING_PASSWORD``, ...) and the
password of a tracking URI never reach params, tags, logs, artifacts or the data folders.

Each test sets fake credentials whose values share one distinctive marker, runs what a user runs, and
searches everything the run wrote for the marker: every param, tag, metric name, dataset input and run
description on the MLflow store (through ``MlflowClient``), the raw bytes of the sqlite file, every artifact
and every file under the project (data/, mlruns/, logs), the home, temporary and cache folders the run was
given, and the console output."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from finetune_predictor import tracking
from finetune_predictor.redaction import MASK, RedactSecrets, redact, redact_exception, redact_uri
from tests.conftest import copy_project
from tests.reliability import record_fault

MARKER = "Zq7xW3vKsecret"
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN",
                "DATABRICKS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
SECRETS = {name: f"fake-{name.lower().replace('_', '-')}-{MARKER}" for name in SECRET_NAMES}
URI_PASSWORD = f"pw{MARKER}"
QUIET = {"KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
# The tiny random Llama, a handful of records, two optimizer steps, fp32: seconds of training.
TINY = ("data.train_per_class=3,data.test_per_class=3,data.synthetic.num_records=120,training.max_steps=2,"
        "training.per_device_train_batch_size=4,training.precision=fp32,evaluation.max_new_tokens=3,"
        "evaluation.engine=hf")


# --- searching everything a run wrote -----------------------------------------------------------------------


def files_with_marker(root: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every file under ``root`` (but ``skip``) whose bytes hold the marker (Parquet files also by their decoded
    content, which compression could hide)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p not in skip):
        data = path.read_bytes()
        if MARKER.encode() in data:
            found.append(str(path))
        elif path.suffix == ".parquet" and MARKER in pd.read_parquet(path).to_csv():
            found.append(f"{path} (decoded)")
    return found


def store_text(uri: str) -> str:
    """Everything the MLflow store holds as text: experiments (name, tags), and every run of every experiment,
    deleted ones too (info, params, tags with the description, metric names, dataset inputs with source,
    schema, profile and tags, outputs)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parts = []
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        parts += [experiment.name, str(experiment.artifact_location), json.dumps(experiment.tags)]
        for run in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL):
            parts.append(json.dumps(run.to_dictionary(), default=str))
            for dataset_input in run.inputs.dataset_inputs:
                dataset = dataset_input.dataset
                parts += [dataset.name, dataset.digest, dataset.source, str(dataset.schema), str(dataset.profile),
                          json.dumps([(tag.key, tag.value) for tag in dataset_input.tags])]
    return "\n".join(parts)


def artifact_roots(uri: str) -> list[Path]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    roots = set()
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        for run in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL):
            roots.add(Path(run.info.artifact_uri.removeprefix("file://")))
    return sorted(roots)


def assert_nothing_leaked(uri: str, folders: list[Path], output: str) -> None:
    """The marker is nowhere: not in the store, its sqlite file, the artifacts, the folders, the output."""
    text = store_text(uri)
    assert MARKER not in text, [line[:300] for line in text.splitlines() if MARKER in line]
    database = Path(uri.removeprefix("sqlite:///"))
    assert database.is_file() and MARKER.encode() not in database.read_bytes()
    roots = [root for root in artifact_roots(uri) if root.is_dir()]  # a run that logged no artifact has none
    assert roots
    for folder in [*folders, *roots]:
        assert not files_with_marker(folder), files_with_marker(folder)
    assert MARKER not in output, [line for line in output.splitlines() if MARKER in line][:5]


def _runs(uri: str) -> list:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id])


def test_the_search_finds_a_planted_secret(tmp_path):
    """The search itself can fail: a secret in a file, in a Parquet column or in a param is found."""
    (tmp_path / "plain.log").write_text(f"token={SECRETS['HF_TOKEN']}\n")
    pd.DataFrame({"x": [SECRETS["WANDB_API_KEY"]] * 50}).to_parquet(tmp_path / "table.parquet")
    assert {Path(p.split(" ")[0]).name for p in files_with_marker(tmp_path)} == {"plain.log", "table.parquet"}
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "leaked", SECRETS["HF_TOKEN"])
    assert MARKER in store_text(uri) and MARKER.encode() in (tmp_path / "m.db").read_bytes()


# --- redaction ------------------------------------------------------------------------------------------------


def test_redact_masks_uri_passwords_and_environment_credentials(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    monkeypatch.setenv("SOME_FLAG", "true")  # not a credential: never masked
    monkeypatch.setenv("GITHUB_TOKEN", "short")  # too short to mask without blanking ordinary words
    assert redact_uri(f"http://alice:{URI_PASSWORD}@tracking:5000/#/x") == f"http://alice:{MASK}@tracking:5000/#/x"
    assert redact_uri("postgresql+psycopg2://mlflow:p%40ss@db/mlflow") == f"postgresql+psycopg2://mlflow:{MASK}@db/mlflow"
    # A URI that went through a file path (pathlib keeps one slash: https:/host).
    assert redact_uri(f"https:/alice:{URI_PASSWORD}@host/x.jsonl: file not found") == (
        f"https:/alice:{MASK}@host/x.jsonl: file not found")
    # Ports, paths and URIs without a password stay as they are.
    for text in ("http://tracking:5000/api/2.0", "sqlite:///mlflow.db", "https://alice@host/x", "a:b@c"):
        assert redact_uri(text) == text
    line = f"API request to http://alice:{URI_PASSWORD}@h/api failed; token {SECRETS['HF_TOKEN']} true short"
    assert redact(line) == f"API request to http://alice:{MASK}@h/api failed; token {MASK} true short"
    nested = {"a": [f"s3://k:{URI_PASSWORD}@b/x", 1], "b": ("x",)}
    assert redact(nested) == {"a": [f"s3://k:{MASK}@b/x", 1], "b": ("x",)}


def test_a_log_record_and_an_exception_chain_are_redacted(monkeypatch, caplog, request):
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("OPENAI_API_KEY", SECRETS["OPENAI_API_KEY"])
    caplog.handler.addFilter(RedactSecrets())
    url = f"http://alice:{URI_PASSWORD}@127.0.0.1:9/api/2.0/mlflow/runs/create"
    try:
        try:
            raise MlflowException(f"API request to {url} failed with exception ConnectionRefused")
        except MlflowException as error:
            raise RuntimeError(f"could not log ({os.environ['OPENAI_API_KEY']})") from error
    except RuntimeError as error:
        logging.getLogger("finetune_predictor.test").error("failed: %s", error.__cause__, exc_info=True)
        redact_exception(error)
        assert MARKER not in str(error) and MARKER not in str(error.__cause__)
        assert MARKER not in error.__cause__.message
    assert MARKER not in caplog.text and f"alice:{MASK}@127.0.0.1" in caplog.text
    record_fault(request.node.name, fault="a credential in an error message (MLflow quotes its request URL)",
                 injected="MlflowException naming http://alice:<password>@host, wrapped in an error quoting a token",
                 outcome="redacted: the log line and the exception chain show *** for both", lost="nothing",
                 time_lost="none")


def test_params_and_tags_written_by_the_run_record_are_masked(tmp_path, monkeypatch, request):
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        experiment_id = mlflow.set_experiment(tracking.EXPERIMENT_NAME).experiment_id
        run = mlflow.tracking.MlflowClient().create_run(experiment_id)
        # A user's data path with credentials in it, and a setting that quotes a token.
        tracking.log_params(run.info.run_id, {"data.path": f"https://alice:{URI_PASSWORD}@host/train.jsonl",
                                              "data.note": f"got {SECRETS['HF_TOKEN']}"})
        tracking.log_params(run.info.run_id, {"data.path": f"https://alice:{URI_PASSWORD}@host/train.jsonl"})
        tracking.set_tags(run.info.run_id, {"run_failure": f"API request to http://bob:{URI_PASSWORD}@h/x failed"})
        with pytest.raises(RuntimeError), tracking.child_run(experiment_id, run.info.run_id, "child", {}):
            raise RuntimeError(f"store down: http://bob:{URI_PASSWORD}@h/x")
        logged = mlflow.get_run(run.info.run_id).data
        assert logged.params["data.path"] == f"https://alice:{MASK}@host/train.jsonl"
        assert logged.params["data.note"] == f"got {MASK}"
        assert logged.tags["run_failure"].endswith(f"bob:{MASK}@h/x failed")
        assert MARKER not in store_text(mlflow.get_tracking_uri())
        assert MARKER.encode() not in (tmp_path / "m.db").read_bytes()
    finally:
        mlflow.set_tracking_uri("")
    record_fault(request.node.name, fault="a credential in a setting or a failure message bound for the store",
                 injected="a data path https://alice:<password>@host/..., a token in a param, a failing child run "
                          "whose error names a credentialed URL", outcome="redacted: params and tags hold ***",
                 lost="nothing", time_lost="none")


# --- a real mini_test100 run and a real sweep, with credentials in the environment ------------------------------


def _environment(tmp_path: Path) -> tuple[dict[str, str], list[Path]]:
    """The run's environment: the fake credentials, and its own home, temporary and cache folders (searched
    afterwards)."""
    folders = {name: tmp_path / name for name in ("home", "tmp", "cache")}
    for folder in folders.values():
        folder.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment.update({**QUIET, **SECRETS, "HOME": str(folders["home"]), "TMPDIR": str(folders["tmp"]),
                        "FINETUNE_PREDICTOR_CACHE": str(folders["cache"])})
    return environment, list(folders.values())


def _kedro(project: Path, environment: dict[str, str], *args: str, timeout: int = 600) -> tuple[int, str]:
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run([str(kedro), "run", *args], cwd=project, capture_output=True, text=True,
                            timeout=timeout, env=environment)
    return result.returncode, result.stdout + result.stderr


def test_a_mini_test100_run_writes_no_credential_anywhere(tmp_path, tiny_model_dir, request):
    project = copy_project(tmp_path / "project")
    environment, folders = _environment(tmp_path)
    code, output = _kedro(project, environment, "--pipeline=mini_test100", "--params",
                          f"model.name={tiny_model_dir},{TINY}")
    assert code == 0, output[-5000:]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    [run] = _runs(uri)
    # The search covers a run that wrote everything: settings, the record, data inputs, every artifact.
    assert run.info.status == "FINISHED" and "replicate_key" in run.data.params and run.inputs.dataset_inputs
    assert {"adapter", "predictions", "plots"} <= {a.path for a in mlflow.tracking.MlflowClient(
        tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert (project / "data" / "08_reporting").is_dir()
    assert_nothing_leaked(uri, [project, *folders], output)
    record_fault(request.node.name, fault="credentials in the environment of a kedro run",
                 injected=f"{len(SECRETS)} fake tokens (HF_TOKEN, MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, "
                          "...) set for `kedro run --pipeline=mini_test100`; store, sqlite bytes, artifacts, data/, "
                          "home, tmp, cache and console searched", outcome="nothing lost: no credential anywhere",
                 lost="nothing", time_lost="none")


def test_a_sweep_writes_no_credential_and_masks_a_credentialed_store_error(tmp_path, tiny_model_dir, monkeypatch,
                                                                          caplog, capfd, request):
    from mlflow.exceptions import MlflowException

    from finetune_predictor.pipelines.sensitivity import configuration_run
    from tests.test_sweep import _sweep

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands here
    # What a Kedro session does (redaction.install_filter, from hooks.RedactSecretsHooks), undone afterwards:
    # the console's handlers redact, and so does pytest's capture.
    for handler in [*logging.getLogger().handlers, caplog.handler]:
        monkeypatch.setattr(handler, "filters", [*handler.filters, RedactSecrets()])
    caplog.set_level(logging.DEBUG)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        outcome = _sweep(tmp_path, tiny_model_dir, train_per_class=[2])
        assert outcome.status["ran"] == 1 and len(outcome.results) == 1

        # The store goes away mid-configuration: MLflow's error names the URL with its password.
        def store_down(*args, **kwargs):
            raise MlflowException(f"API request to http://alice:{URI_PASSWORD}@tracking:5000/api/2.0/mlflow/runs/"
                                  f"log-batch failed with exception ConnectionRefused (token {SECRETS['HF_TOKEN']})")

        monkeypatch.setattr(configuration_run, "train_and_evaluate", store_down)
        failing = _sweep(tmp_path, tiny_model_dir, train_per_class=[2], learning_rates=[1e-2])
    finally:
        mlflow.set_tracking_uri("")
    assert failing.status["failed"] == 1
    error = failing.status["failures"][0]["error"]
    assert MARKER not in error and f"alice:{MASK}@tracking" in error
    failed = [run for run in _runs(uri) if run.info.status == "FAILED"]
    assert len(failed) == 1 and f"alice:{MASK}@tracking" in failed[0].data.tags["run_failure"]
    console = capfd.readouterr()
    assert_nothing_leaked(uri, [tmp_path], caplog.text + console.out + console.err)
    record_fault(request.node.name, fault="credentials in the environment of a sweep; the store fails with a "
                 "credentialed URL", injected="fake tokens in the environment of a one-configuration sweep, then a "
                 "configuration whose MLflow call fails naming http://alice:<password>@host",
                 outcome="redacted: the failure in the sweep status, the run's run_failure tag and the log show ***",
                 lost="the failed configuration (re-run on resume)", time_lost="one configuration")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_credentialed_tracking_uri_is_masked_when_the_server_is_down(tmp_path, request):
    """A run whose tracking server (named with user:password@ in conf/local/mlflow.yml) does not answer fails
    clearly, and neither the log nor the traceback shows the password (MLflow's error names the URL)."""
    project = copy_project(tmp_path / "project")
    settings = project / "conf" / "local" / "mlflow.yml"
    settings.write_text(f"server:\n  mlflow_tracking_uri: http://alice:{URI_PASSWORD}@127.0.0.1:{_free_port()}\n")
    environment, folders = _environment(tmp_path)
    environment.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    code, output = _kedro(project, environment, "--pipeline=data_engineering", "--params",
                          "data.synthetic.num_records=60", timeout=300)
    assert code != 0, output[-3000:]
    assert f"alice:{MASK}@127.0.0.1" in output, output[-3000:]  # the URL was printed, without its password
    assert MARKER not in output, [line for line in output.splitlines() if MARKER in line][:5]
    for folder in [project, *folders]:
        assert not files_with_marker(folder, skip=(settings,)), files_with_marker(folder, skip=(settings,))
    record_fault(request.node.name, fault="tracking server down, its URI with user:password@",
                 injected="conf/local/mlflow.yml names http://alice:<password>@127.0.0.1:<closed port>",
                 outcome="failed clearly: the error names the server as alice:***@..., no password anywhere",
                 lost="nothing (the run had not started)", time_lost="none")


def test_a_credentialed_setting_on_the_command_line_is_masked_in_the_run(tmp_path, request):
    """``--params data.path=https://alice:<password>@host/...``: kedro-mlflow tags the run with the command's
    parameters (``runtime_params``) as they were typed; the settings are logged as params. Neither keeps the
    password (the run then stops at the preflight: there is no such file)."""
    project = copy_project(tmp_path / "project")
    environment, folders = _environment(tmp_path)
    code, output = _kedro(project, environment, "--pipeline=preflight", "--params",
                          f"data.path=https://alice:{URI_PASSWORD}@127.0.0.1:9/train.jsonl", timeout=300)
    assert code == 1, output[-3000:]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    [run] = _runs(uri)
    assert run.data.params["data.path"] == f"https://alice:{MASK}@127.0.0.1:9/train.jsonl"
    assert f"alice:{MASK}@" in str(run.data.tags)
    assert MARKER not in store_text(uri) and MARKER.encode() not in (project / "mlflow.db").read_bytes()
    assert MARKER not in output, [line for line in output.splitlines() if MARKER in line][:5]
    for folder in [project, *folders]:
        assert not files_with_marker(folder), files_with_marker(folder)
    record_fault(request.node.name, fault="a password in a setting given on the command line",
                 injected="--params data.path=https://alice:<password>@host/train.jsonl",
                 outcome="redacted: the run's params and tags (kedro-mlflow's runtime_params), the verdict and the "
                         "console show alice:***@", lost="nothing", time_lost="none")


def test_mlflow_never_prints_the_server_uri_with_its_password(monkeypatch):
    """MLflow's client writes "View run ... at: <host>/#/..." to stdout for every run it ends on an HTTP store,
    with the host as the user typed it (``http://alice:<password>@host``): the project turns that off."""
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    from finetune_predictor import tracking

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    assert not MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get()
    tracking.use_http_request_defaults()
    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get()
