"""The meta-dataset study: its committed design spans what the predictor must generalise over (issue 28's
list), and `kedro meta-dataset` refuses an unknown chunk in one message and keeps going past a failing sweep.

Kedro sessions run in subprocesses here, as `kedro meta-dataset` runs them: in this process, a session's context
leaves MLflow bound to its project's relative ``sqlite:///mlflow.db`` (one SQLite engine per URI per process), and
a later test's in-process `kedro run` of another project then logged its run into this one's store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from finetune_predictor import cli
from finetune_predictor.data.task_data import dataset_family
from finetune_predictor.errors import VERBOSE_ENV, UserFacingError
from finetune_predictor.prediction import meta_dataset
from tests.conftest import PROJECT_ROOT, copy_project

LOAD_STUDY = ("import json, sys; from pathlib import Path; from kedro.framework.startup import bootstrap_project; "
              "from finetune_predictor.prediction import meta_dataset; bootstrap_project(Path.cwd()); "
              "print(json.dumps(meta_dataset.load_study(Path.cwd())))")
QUIET = {"KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("meta") / "project", with_source=False)


def _in(project: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=project, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **QUIET})


@pytest.fixture(scope="module")
def study(project):
    """The committed study as `load_study` reads it (anchors resolved, the environment's sensitivity settings)."""
    result = _in(project, sys.executable, "-c", LOAD_STUDY)
    assert result.returncode == 0, result.stderr[-3000:]
    chunks, sensitivity = json.loads(result.stdout.strip().splitlines()[-1])
    return chunks, sensitivity


def test_the_committed_study_spans_every_task_eight_families_and_each_axis(study):
    chunks, sensitivity = study
    sweeps = [sweep for chunk in chunks.values() for sweep in chunk]
    grids = [{**sensitivity, **(sweep.get("sensitivity") or {})} for sweep in sweeps]
    assert sum(meta_dataset.sweep_size(sweep, sensitivity) for sweep in sweeps) == 146
    assert {(sweep["data"].get("task") or "binary_classification") for sweep in sweeps} == {
        "binary_classification", "multiclass_classification", "qa", "structured"}
    families = {dataset_family(sweep["data"]) for sweep in sweeps}
    assert len(families) >= 8, families
    # The predictor's source corpora name families of the study (a misspelt one would group nothing).
    corpora = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_predictor.yml").read_text())["predictor"]
    assert set(corpora["source_corpora"]) <= families
    assert len({rate for grid in grids for rate in grid["learning_rates"]}) >= 3
    assert len({lora["r"] for grid in grids for lora in grid["lora"]}) >= 3
    assert any(len(set(grid["seeds"]) | {42}) >= 2 for grid in grids)  # a second seed somewhere: the noise floor
    assert {"noisy10", "noisy30", "dup50", "imbalanced80"} <= {variant["name"] for grid in grids
                                                              for variant in grid["data_variants"]}


def test_an_unknown_chunk_is_one_message_naming_the_known_ones(study):
    chunks, _ = study
    with pytest.raises(UserFacingError, match="Unknown meta-dataset chunk 'nope'") as refused:
        meta_dataset.chunk_sweeps(chunks, "nope")
    assert "c1_span" in refused.value.fix and refused.value.where == "--chunk"


def test_the_command_lists_the_chunks_and_refuses_an_unknown_one_without_a_traceback(project):
    kedro = str(Path(sys.executable).with_name("kedro"))
    listed = _in(project, kedro, "meta-dataset", "--list")
    assert listed.returncode == 0 and "c1_span: 8 sweeps, 26 runs" in listed.stdout, listed.stdout + listed.stderr
    refused = _in(project, kedro, "meta-dataset", "--chunk", "nope")
    assert refused.returncode == 1 and "Unknown meta-dataset chunk 'nope'" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_a_failing_sweep_costs_neither_the_others_nor_the_archive(study, project, monkeypatch, verbose):
    """One sweep fails (a bad data file, say): the chunk's other sweeps still run, the store's finished runs are
    still archived, and the command ends with status 1 naming the sweep to resume (asking for tracebacks too)."""
    monkeypatch.setenv(VERBOSE_ENV, verbose)
    ran, archived = [], []

    def run_sweep(path, sweep, env):
        ran.append(sweep)
        if len(ran) == 1:
            raise UserFacingError("data.path ../nowhere.jsonl does not exist", where="data.path", fix="correct it")

    monkeypatch.setattr(meta_dataset, "load_study", lambda path, env: study)
    monkeypatch.setattr(meta_dataset, "run_sweep", run_sweep)
    monkeypatch.setattr(meta_dataset, "archive", lambda path, env: archived.append(path))
    monkeypatch.chdir(project)
    result = CliRunner().invoke(cli.cli, ["meta-dataset", "--chunk", "c1_span"])
    assert result.exit_code == 1 and len(ran) == 8 and archived == [project]
    assert "data.path ../nowhere.jsonl does not exist" in result.output
    assert "Sweeps that did not finish" in result.output and "c1_span sweep 1/8" in result.output
