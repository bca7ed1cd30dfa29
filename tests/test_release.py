"""The release pipeline on the tiny random Llama: the merge computes what the adapter computed (and a wrong merge is
refused), a GGUF reloads with the HF tokenizer's tokens, a damaged GGUF is one clear error, the disk is checked
before anything is written, and the whole pipeline runs under Kedro's SequentialRunner against a temporary store."""

from __future__ import annotations

import importlib.util
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor import tracking
from finetune_predictor.modeling import gguf_export, release
from finetune_predictor.modeling.artifacts import folder_checksums, write_manifest
from finetune_predictor.modeling.evaluation import predict
from finetune_predictor.modeling.model_session import ModelSession, open_session
from finetune_predictor.pipelines.release import create_pipeline, nodes, source
from finetune_predictor.tasks import build_task

DATA = {"task": "binary_classification", "label_positive": "fake", "label_negative": "legitimate"}
EVALUATION = {"batch_size": 4, "generation": True, "max_new_tokens": 3, "engine": "hf", "label_scoring": "sum"}
RECORDS = [{"id": f"r{i}", "instruction": "Is this news item fake or legitimate? Answer with one word.",
            "input": text, "output": label}
           for i, (text, label) in enumerate([("Aliens built the new bridge overnight.", "fake"),
                                              ("The council approved the budget on Tuesday.", "legitimate"),
                                              ("Scientists say the moon is made of cheese.", "fake"),
                                              ("Rail fares rise by two percent in March.", "legitimate"),
                                              ("A cat was elected mayor of the capital.", "fake"),
                                              ("The central bank kept interest rates unchanged.", "legitimate")])]
CONVERTER_READY = ((gguf_export.converter_dir() / gguf_export.CONVERTER).is_file()
                   and not gguf_export.missing_converter_modules())
BINDINGS = gguf_export.llama_cpp_version() is not None
needs_llama_cpp = pytest.mark.skipif(not (BINDINGS and CONVERTER_READY), reason=(
    "llama-cpp-python and llama.cpp's converter are the optional release extra (`make release-extra`, which "
    f"compiles llama.cpp); bindings {'found' if BINDINGS else 'absent'}, converter "
    f"{'found' if CONVERTER_READY else 'absent (or its modules missing) at ' + str(gguf_export.converter_dir())}"))


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny Llama with random, non-zero A and B (alpha/r = 4), saved with its manifest."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    session = open_session({"name": str(tiny_model_dir), "max_length": 256}, {}, "train", "fp32")
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(session.load_model(), config)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    write_manifest(path, folder_checksums(path), base_model=str(tiny_model_dir), precision="fp32")
    return path


@pytest.fixture(scope="module")
def session(tiny_model_dir) -> ModelSession:
    return open_session({"name": str(tiny_model_dir), "max_length": 256}, {}, "evaluate", "fp32")


def _prompts(session: ModelSession) -> list[list[int]]:
    return [session.formatter.prompt_ids(r["instruction"], r["input"]) for r in RECORDS[:3]]


def test_merged_model_computes_what_the_adapter_model_computes(session, adapter_dir, tmp_path):
    prompts = _prompts(session)
    reference = release.log_probs_of(session.adapter_model(adapter_dir), prompts)
    base = release.log_probs_of(session.load_model(), prompts)
    assert release.max_difference(reference, base) > 0.05  # the adapter changes the model: the check can see it
    done = release.merge_adapter(session, adapter_dir, tmp_path / "merged", prompts, atol=1e-4)
    assert done["max_logprob_difference"] < 1e-4 and (tmp_path / "merged" / "manifest.json").is_file()
    reloaded = session.for_folder(tmp_path / "merged").load_model()  # from disk, as the hf_merged variant is
    assert not any("lora_" in name for name, _ in reloaded.named_parameters())
    assert release.max_difference(reference, release.log_probs_of(reloaded, prompts)) < 1e-4


def test_a_merge_without_the_lora_scaling_is_refused_and_nothing_is_written(session, adapter_dir, tmp_path,
                                                                             monkeypatch):
    real = ModelSession.merged_model

    def unscaled(self, adapter, adapter_model=None):
        for module in adapter_model.modules():
            if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                module.scaling = {name: 1.0 for name in module.scaling}  # W + BA instead of W + (alpha/r) BA
        return real(self, adapter, adapter_model)

    monkeypatch.setattr(ModelSession, "merged_model", unscaled)
    with pytest.raises(release.MergeMismatchError, match="differ from the adapter model's"):
        release.merge_adapter(session, adapter_dir, tmp_path / "merged", _prompts(session), atol=1e-3)
    assert not (tmp_path / "merged").exists()


def _small_gguf(path) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_truncated_or_corrupted_gguf_is_one_clear_error(tmp_path):
    path = tmp_path / "model.gguf"
    _small_gguf(path)
    good = gguf_export.check_gguf(path)
    assert good["tensors"] == 2 and good["chat_template"] and good["tensor_types"] == {"F32": 2}
    sha256 = gguf_export.sha256_file(path)
    data = path.read_bytes()

    path.write_bytes(data[:-1000])  # cut inside the tensor data
    with pytest.raises(gguf_export.GGUFIntegrityError, match="truncated") as cut:
        gguf_export.check_gguf(path)
    assert str(path) in str(cut.value) and "pipeline=release" in cut.value.fix
    path.write_bytes(data[:40])  # cut inside the header
    with pytest.raises(gguf_export.GGUFIntegrityError, match="header or tensor table"):
        gguf_export.check_gguf(path)
    path.write_bytes(b"GGML" + data[4:])
    with pytest.raises(gguf_export.GGUFIntegrityError, match="magic"):
        gguf_export.check_gguf(path)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # one weight byte: the structure still reads, the hash does not match
    path.write_bytes(bytes(flipped))
    assert gguf_export.check_gguf(path)["tensors"] == 2
    with pytest.raises(gguf_export.GGUFIntegrityError, match="sha256"):
        gguf_export.check_gguf(path, expected_sha256=sha256)


def _source_settings(tiny_model_dir) -> dict:
    model = {"name": str(tiny_model_dir), "max_length": 256, "cache_dir": None, "quantization": "none",
             "system_prompt": None}
    return {"data": DATA, "model": model, "evaluation": EVALUATION, "precision": "fp32"}


def test_the_disk_is_checked_before_anything_is_written(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(release, "free_bytes", lambda path: 10 * release.MIB)
    run = {"run_id": "abc123", "settings": _source_settings(tiny_model_dir)}
    params = {"output_dir": str(tmp_path / "releases"), "variants": ["hf_merged", "f16", "q8_0", "q4_k_m"]}
    with pytest.raises(release.ReleaseDiskError, match="nothing was written") as refused:
        nodes.plan_release(run, params, {})
    assert "release.output_dir" in refused.value.where
    assert not (tmp_path / "releases").exists()


def test_a_converter_without_its_python_modules_is_a_reason_not_a_failed_export(tmp_path, monkeypatch):
    """The converter found in the cache (unpacked by an earlier `make release-extra`) but sentencepiece missing
    from this environment: the f16 file is 'not produced' with the remedy, before anything runs (CI's clean
    venv used to start the converter and fail on its import)."""
    (tmp_path / gguf_export.CONVERTER).write_text("")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "sentencepiece" else real_find_spec(name, *args))
    plan = nodes._variant_plan("f16", tmp_path, bindings=None)
    assert not plan["produce"] and "sentencepiece" in plan["reason"] and "make release-extra" in plan["reason"]


def test_a_runs_settings_are_read_back_from_its_params(store):
    data = {"task": "multiclass_classification", "labels": ["true", "half-true", "false"],
            "qa": {"group_by": "paragraph"}, "train_per_class": 8, "columns": {}}
    model = {"name": "SmolLM2-135M-Instruct", "max_length": 384, "system_prompt": "Be brief."}
    evaluation = {"label_scoring": "calibrated", "max_new_tokens": None, "generation": False}
    training = {"precision": "fp32", "learning_rate": 1e-3}
    with mlflow.start_run(experiment_id=store) as run:
        tracking.log_params(run.info.run_id, tracking.settings_params(
            {"data": data, "model": model, "evaluation": evaluation, "training": training}, with_record=True))
    settings = source.run_settings(mlflow.get_run(run.info.run_id))
    assert settings["data"]["task"] == "multiclass_classification"
    assert tuple(settings["data"]["labels"]) == ("true", "half-true", "false")
    assert settings["data"]["qa"]["group_by"] == "paragraph" and settings["data"]["train_per_class"] == 8
    assert (settings["model"]["name"], settings["model"]["max_length"]) == ("SmolLM2-135M-Instruct", 384)
    assert settings["model"]["system_prompt"] == "Be brief."
    assert settings["evaluation"]["label_scoring"] == "calibrated" and settings["evaluation"]["generation"] is False
    assert settings["evaluation"]["max_new_tokens"] is None and settings["precision"] == "fp32"


def _log_source_run(store, tmp_path, tiny_model_dir, adapter_dir, session) -> str:
    """A finished mini_test100 run as the project logs it: settings, split hashes, metrics, adapter, predictions;
    its test set saved where the catalog saves it."""
    from finetune_predictor.data.records import content_sha256

    test = pd.DataFrame(RECORDS)
    folder = tmp_path / "data/03_primary/test_set.parquet/2026-01-01T00.00.00.000Z"
    folder.mkdir(parents=True)
    test.to_parquet(folder / "test_set.parquet")
    settings = _source_settings(tiny_model_dir)
    frame = predict(test, build_task(DATA), session, EVALUATION, adapter_dir=str(adapter_dir))
    (tmp_path / "predictions").mkdir()
    frame.to_json(tmp_path / "predictions/finetuned_predictions.jsonl", orient="records", lines=True)
    with mlflow.start_run(experiment_id=store, tags={"pipeline_names": "['mini_test100']"}) as run:
        tracking.log_params(run.info.run_id, tracking.settings_params(
            {"data": DATA, "model": settings["model"], "evaluation": EVALUATION,
             "training": {"precision": "fp32"}}, with_record=True))
        mlflow.log_params({"test_sha256": content_sha256(test), "train_size": 6, "precision": "fp32"})
        mlflow.log_metrics({"finetuned_primary": 0.5, "baseline_primary": 0.5})
        mlflow.log_artifacts(str(adapter_dir), "adapter")
        mlflow.log_artifact(str(tmp_path / "predictions/finetuned_predictions.jsonl"), "predictions")
    return run.info.run_id


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_model_dir, adapter_dir, session):
    """The release pipeline run once on the tiny model's source run in a store of its own (in this process,
    GGUFs where the release extra is there): the run's id, the catalog and the release folder."""
    tmp_path = tmp_path_factory.mktemp("release")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
        try:
            store = mlflow.set_experiment(tracking.EXPERIMENT_NAME).experiment_id
            run_id = _log_source_run(store, tmp_path, tiny_model_dir, adapter_dir, session)
            params = {"run_id": None, "output_dir": "releases", "variants": ["hf_merged", "f16", "q8_0", "q4_k_m"],
                      "isolate": False, "benchmark_prompts": 2, "benchmark_new_tokens": 4, "logit_check_records": 2,
                      "threads": 2}
            catalog = DataCatalog({"params:release": MemoryDataset(params), "params:model_registry": MemoryDataset({}),
                                   "release.tracking.metrics": MemoryDataset(copy_mode="assign")})
            SequentialRunner().run(create_pipeline(), catalog)
        finally:
            mlflow.set_tracking_uri("")
            mlflow.tracking.fluent._active_experiment_id = None
    return run_id, catalog, tmp_path / "releases" / run_id


def test_the_release_pipeline_runs_on_the_tiny_model(released):
    run_id, catalog, folder = released
    table = pd.read_csv(folder / "release_table.csv").set_index("variant")
    merged = table.loc["hf_merged"]
    assert merged["status"] == "evaluated" and merged["delta_vs_adapter"] == 0.0
    assert merged["agreement_with_adapter"] == 1.0 and merged["size_mb"] > 0 and merged["load_s"] > 0
    for name in ("f16", "q8_0", "q4_k_m"):  # each GGUF evaluated, or missing with its reason
        assert table.loc[name, "status"] == "evaluated" or "release extra" in str(table.loc[name, "reason"]) \
            or "make release-extra" in str(table.loc[name, "reason"])
    card = (folder / "README.md").read_text()
    assert "Intended use" in card and "Limits" in card and "binomial SE" in card and run_id in card
    sums = (folder / "SHA256SUMS").read_text()
    assert "hf_merged/model.safetensors" in sums and "README.md" in sums and "adapter/manifest.json" in sums
    metrics = catalog.load("release.tracking.metrics")
    assert {"release_hf_merged_primary", "release_hf_merged_size_mb", "release_hf_merged_tokens_per_s"} <= set(metrics)
    summary = json.loads((folder / "release.json").read_text())
    assert summary["merge"]["max_logprob_difference"] < 1e-3 and summary["source"]["run_id"] == run_id


@needs_llama_cpp
def test_each_gguf_reloads_with_the_hf_tokenizers_tokens_and_its_chat_template(released, session):
    from finetune_predictor.modeling import llama_cpp_eval

    _run_id, _catalog, folder = released
    table = pd.read_csv(folder / "release_table.csv").set_index("variant")
    for name in ("f16", "q8_0", "q4_k_m"):
        assert table.loc[name, "status"] == "evaluated", table.loc[name, "reason"]
        path = folder / table.loc[name, "file"].split("/")[-1]
        assert gguf_export.check_gguf(path)["chat_template"]
        llm = llama_cpp_eval.load_gguf(path, n_ctx=300, threads=2)
        check = llama_cpp_eval.template_check(llm, session.formatter, RECORDS, ["fake", "legitimate"])
        assert check["prompts_matching"] == len(RECORDS) and check["answers_matching"] == 2, check
    assert abs(table.loc["f16", "delta_vs_adapter"]) <= table.loc["f16", "binomial_se"]


def test_no_release_node_reads_a_plot_back():
    """A plot entry is an MLflow artifact Kedro saves but cannot load: a node reading it failed the real run after
    every variant was evaluated (the in-memory test catalog above cannot see that)."""
    import yaml

    from tests.conftest import PROJECT_ROOT

    entries = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    plots = {name for name, entry in entries.items() if "Matplotlib" in json.dumps(entry)}
    read = {name for node in create_pipeline().nodes for name in node.inputs}
    assert not plots & read, f"nodes read plots back: {plots & read}"
