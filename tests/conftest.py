"""Shared fixtures: the real embedded model's files, and a tiny random Llama with its real tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core: one OpenMP thread each (and in the `kedro run`s they start), so the
    # workers share the cores instead of oversubscribing them (two 2-thread torch processes on 2 cores run up to
    # 10x slower). Set before torch is imported.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def copy_project(project: Path, with_source: bool = True) -> Path:
    """The project's conf (without conf/local), pyproject.toml, .telemetry and src in a fresh folder, so the runs
    a test makes write their data/, build/ and mlflow.db nowhere near the checkout. Kedro requires the source
    folder inside the project root, so it is copied rather than linked; ``with_source=False`` leaves it empty
    (the installed package is used)."""
    import shutil

    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, project / name)
    if with_source:
        shutil.copytree(PROJECT_ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        (project / "src").mkdir()
    return project


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2-135M-Instruct, converted to an HF folder once (cached between runs)."""
    from finetune_predictor.modeling.model_session import resolve_model

    return resolve_model("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def tokenizer(embedded_model):
    from finetune_predictor.modeling.model_session import load_tokenizer

    return load_tokenizer(embedded_model.path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama sharing the real tokenizer and chat template: fast mechanics, real tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def liar_dir() -> Path:
    path = SHARED_DATA / "liar"
    if not path.is_dir():
        pytest.skip(f"shared LIAR data not present at {path} (a user's fresh clone has none)")
    return path


@pytest.fixture()
def squad_file() -> Path:
    path = SHARED_DATA / "squad" / "squad_v2_dev_5articles.json"
    if not path.is_file():
        pytest.skip(f"shared SQuAD sample not present at {path} (a user's fresh clone has none)")
    return path


@pytest.fixture(scope="session")
def tiny_session(tiny_model_dir):
    """The tiny Llama's model session (fp32, 256-token prompts), as training opens it."""
    from finetune_predictor.modeling.model_session import open_session

    return open_session({"name": str(tiny_model_dir), "max_length": 256}, {}, "train", "fp32")


@pytest.fixture()
def store(tmp_path):
    """A fresh SQLite MLflow store for one test, with the project's experiment: its id."""
    import mlflow

    from finetune_predictor import tracking

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    yield mlflow.set_experiment(tracking.EXPERIMENT_NAME).experiment_id
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri("")
    mlflow.tracking.fluent._active_experiment_id = None  # this store's id means nothing in the next test's


@pytest.fixture(scope="session", autouse=True)
def the_checkouts_own_store_is_left_alone():
    """No test logs into the checkout's mlflow.db: that is the user's store, and archive_runs reads it (a test's
    tiny-model run, logged there through a relative sqlite URI left bound by an in-process session, once entered
    the runs archive)."""
    store = PROJECT_ROOT / "mlflow.db"
    before = store.stat().st_mtime_ns if store.exists() else None
    yield
    after = store.stat().st_mtime_ns if store.exists() else None
    assert after == before, f"a test wrote to {store} (the checkout's own tracking store)"


def pytest_runtest_logreport(report):
    """A fault test that fails loses its row in docs/reliability.md (tests/reliability.py)."""
    if report.failed:
        from tests.reliability import record_failure

        record_failure(report.nodeid.split("::")[-1])  # the test's node name, as record_fault is given it


def pytest_sessionfinish(session, exitstatus):
    """Rewrite docs/reliability.md from the fault tests that passed (tests/reliability.py)."""
    from tests.reliability import write_table

    write_table()
