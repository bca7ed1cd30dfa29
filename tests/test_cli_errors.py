"""Expected user errors print one block (what, where, how to fix) and exit 1 without a traceback; bugs and
``--verbose`` keep the traceback (issue 18: a 200-line traceback per typo, the verdict table three times)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import KedroCliError

from finetune_predictor import cli
from finetune_predictor.data.records import RecordError
from finetune_predictor.errors import VERBOSE_ENV, HideUserErrorEchoes, UserFacingError, find_user_error
from finetune_predictor.settings_schema import SettingsError
from tests.conftest import copy_project

QUIET = {"KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project's conf (without conf/local), src and pyproject.toml in a fresh folder, so the runs write
    their data/ and mlflow.db nowhere near the checkout."""
    return copy_project(tmp_path_factory.mktemp("cli") / "project")


def _kedro_run(project: Path, *args: str, **env: str) -> tuple[int, str]:
    kedro = Path(sys.executable).with_name("kedro")
    environment = {key: value for key, value in os.environ.items() if key != VERBOSE_ENV}
    result = subprocess.run([str(kedro), "run", *args], cwd=project, capture_output=True, text=True, timeout=600,
                            env={**environment, **QUIET, **env})
    return result.returncode, result.stdout + result.stderr


def test_a_misspelt_setting_fails_the_preflight_once_without_a_traceback(project):
    code, output = _kedro_run(project, "--pipeline=preflight", "--params", "data.train_per_clas=3")
    assert code == 1, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert "data.train_per_clas (did you mean data.train_per_class?)" in output
    assert output.count("Preflight verdict") == 1, output[-4000:]
    assert "preflight FAILED: 1 check(s) failed (settings)" in output
    assert "  fix:" in output and "  where:" in output
    # Kedro's echoes of the error: the node's message again, and a resume from the node that refused.
    assert "--from-nodes" not in output and "failed with error" not in output, output[-4000:]


def test_a_csv_without_the_mapped_columns_names_them_and_the_setting(project, tmp_path):
    """data_engineering alone (no preflight): the reader's error reaches the console as one block."""
    data = tmp_path / "statements.csv"
    data.write_text("text,verdict\nThe moon is made of cheese.,fake\n")
    code, output = _kedro_run(project, "--pipeline=data_engineering", "--params", f"data.path={data}")
    assert code == 1 and "Traceback" not in output, output[-4000:]
    assert f"where: {data}:1" in output
    assert "no column 'instruction' (data.columns.instruction), 'output' (data.columns.output)" in output
    assert "the columns found are: text, verdict" in output and "data.columns" in output


def test_verbose_shows_the_traceback_of_an_expected_error(project):
    code, output = _kedro_run(project, "--pipeline=data_engineering", "--verbose", "--params",
                              "data.train_per_class=abc")
    assert code != 0 and "Traceback" in output
    assert "data.train_per_class must be an integer, got 'abc'" in output


def test_the_run_command_keeps_every_kedro_option():
    ours = {option.name for option in cli.run.params}
    assert {option.name for option in kedro_run.params} <= ours and "verbose" in ours


def _invoke(monkeypatch, error: Exception, *args: str):
    def failing_run(**options: object) -> None:
        raise error

    monkeypatch.setattr(kedro_run, "callback", failing_run)
    # setenv first, so the undo removes what `--verbose` sets in this process: left set, it made every later
    # test's `kedro run` subprocess print tracebacks (a delenv of an absent variable records nothing to undo).
    monkeypatch.setenv(VERBOSE_ENV, "0")
    monkeypatch.delenv(VERBOSE_ENV)
    monkeypatch.setattr(KedroCliError, "VERBOSE_ERROR", KedroCliError.VERBOSE_ERROR)  # `--verbose` sets it too
    return CliRunner().invoke(cli.run, list(args))


def test_a_user_error_is_one_block_and_status_1(monkeypatch):
    result = _invoke(monkeypatch, RecordError("data/x.jsonl", 3, "unknown label 'maybe'"))
    assert result.exit_code == 1 and not isinstance(result.exception, RecordError)
    assert "finetune-predictor: unknown label 'maybe'" in result.output
    assert "where: data/x.jsonl:3" in result.output and "data.on_invalid=quarantine" in result.output


def test_a_wrapped_user_error_is_found_through_its_cause(monkeypatch):
    try:
        try:
            raise SettingsError([("data.seed", "data.seed must be an integer, got 'x'")])
        except SettingsError as error:
            raise RuntimeError("a runner wrapped it") from error
    except RuntimeError as wrapped:
        result = _invoke(monkeypatch, wrapped)
    assert result.exit_code == 1 and "data.seed must be an integer" in result.output


def test_a_bug_keeps_its_traceback(monkeypatch):
    result = _invoke(monkeypatch, KeyError("a bug"))
    assert isinstance(result.exception, KeyError)  # re-raised: Python prints the traceback
    assert "finetune-predictor:" not in result.output
    verbose = _invoke(monkeypatch, RecordError("x.jsonl", 1, "bad"), "--verbose")
    assert isinstance(verbose.exception, RecordError)


def test_an_error_raised_while_handling_a_user_error_is_a_bug():
    try:
        try:
            raise UserFacingError("expected")
        except UserFacingError:
            raise ValueError("a bug in the handler") from None
    except ValueError as error:
        assert find_user_error(error) is None


def _record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("kedro.pipeline.node", level, __file__, 1, message, None, None)


def test_the_log_filter_drops_only_echoes_of_a_user_error(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    echo = HideUserErrorEchoes()
    node_echo, resume = _record("Node %s failed with error: \n%s"), _record("There are 3 nodes that have not run.")
    try:
        raise UserFacingError("expected")
    except UserFacingError:
        assert not echo.filter(node_echo) and not echo.filter(resume)
        assert echo.filter(_record("something else"))
        monkeypatch.setenv(VERBOSE_ENV, "1")
        assert echo.filter(node_echo)
    monkeypatch.delenv(VERBOSE_ENV)
    try:
        raise KeyError("a bug")
    except KeyError:
        assert echo.filter(node_echo) and echo.filter(resume)


def test_render_has_what_where_fix():
    text = UserFacingError("it broke", "conf/base/parameters_data.yml", "set it right").render()
    assert text.splitlines()[1:4] == ["finetune-predictor: it broke", "  where: conf/base/parameters_data.yml",
                                      "  fix:   set it right"]


def test_a_missing_model_is_a_user_error(monkeypatch):
    from finetune_predictor.modeling.models import ModelNotFoundError

    result = _invoke(monkeypatch, ModelNotFoundError("model.name='org/nowhere' was not found on this machine"))
    assert result.exit_code == 1 and not isinstance(result.exception, ModelNotFoundError)
    assert "finetune-predictor: model.name='org/nowhere' was not found on this machine" in result.output
    assert "where: model.name" in result.output and "fix:" in result.output


def test_user_errors_survive_a_worker_process_boundary():
    """ParallelRunner and Ray pickle a worker's exception: a RecordError or SettingsError that cannot be
    unpickled turned an expected error into a crash of the worker pool."""
    import pickle

    for error in (RecordError("data.jsonl", 3, "missing field 'output'"),
                  SettingsError([("data.train_per_class", "data.train_per_class must be an integer, got 'abc'")]),
                  UserFacingError("what", "where", "fix")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert (copy.what, copy.where, copy.fix) == (error.what, error.where, error.fix)


def test_a_run_whose_process_cannot_be_inspected_is_alive(monkeypatch):
    """psutil.AccessDenied means the process exists (another user's, another PID namespace's): its run must
    not be marked FAILED as stale."""
    import psutil

    from finetune_predictor import tracking

    def denied(pid):
        raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", denied)
    assert tracking._process_alive(12345, None) is True


def test_verbose_in_process_does_not_outlive_the_test():
    """An in-process `--verbose` must not leave FINETUNE_PREDICTOR_VERBOSE set for the tests (and `kedro run`
    subprocesses) that follow: checked here after one, whichever worker and order the test runs in."""
    import os

    with pytest.MonkeyPatch.context() as patch:
        verbose = _invoke(patch, RecordError("x.jsonl", 1, "bad"), "--verbose")
        assert isinstance(verbose.exception, RecordError)
    assert VERBOSE_ENV not in os.environ
