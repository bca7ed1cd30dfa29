"""Preflight: verdicts in seconds, before any training, with the reason in numbers."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.hardware import ComputePlan
from finetune_predictor.model_session import resolve_model
from finetune_predictor.models import ModelEntry, ModelNotFoundError
from finetune_predictor.pipelines.preflight import create_pipeline
from finetune_predictor.preflight import FAIL, PASS, PreflightError, estimate_training_memory, run_checks
from finetune_predictor.settings_schema import TrainingSettings
from tests.conftest import PROJECT_ROOT

REGISTRY = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_model_registry.yml").read_text())["model_registry"]
DATA = {"task": "binary_classification", "path": None, "test_path": None, "label_positive": "fake",
        "label_negative": "legitimate", "train_per_class": 100, "test_per_class": 100}
TRAINING = {"per_device_train_batch_size": 8}


def _verdict(tmp_path, **overrides):
    params = {"data": DATA, "model": {"name": "SmolLM2-135M-Instruct", "max_length": 512}, "registry": REGISTRY,
              "training": TRAINING, "preflight": {"output_dirs": [str(tmp_path / "out")], "min_free_disk_gb": 0.01}}
    params.update(overrides)
    table = run_checks(params["data"], params["model"], params["registry"], params["training"], params["preflight"])
    return dict(zip(table["name"], zip(table["status"], table["detail"], strict=True), strict=True))


def test_memory_estimate_by_hand():
    plan = ComputePlan("cpu", torch.float32, False, False, False, "test")
    settings = TrainingSettings.from_params({"per_device_train_batch_size": 2, "lora": {"r": 4}})
    shape = {"hidden_size": 10, "num_hidden_layers": 3, "vocab_size": 100}
    estimate = estimate_training_memory(1.0, plan, settings, shape, sequence_length=5, margin=1.0)
    assert estimate.weights == 4e9                          # 1B fp32 weights
    assert estimate.lora_and_optimizer == 4 * 2 * 10 * 7 * 3 * 16  # r*(in+out)*7 projections*layers*16 bytes
    tokens = 2 * 5
    # fp32 doubles the 64 bytes per token x layer x hidden; the answer-window loss reads at most 64 positions.
    assert estimate.activations == tokens * 10 * 3 * 64 * 2 + tokens * 100 * 8
    qlora = ComputePlan("cuda", torch.bfloat16, True, False, True, "test")
    assert estimate_training_memory(1.0, qlora, settings, shape, 5, 1.0).weights == pytest.approx(0.56e9)
    assert estimate_training_memory(1.0, qlora, settings, shape, 5, 1.0).activations == (
        tokens * 10 * 3 * 80 + tokens * 100 * 8)
    # Checkpointing keeps each layer's 16-bit input plus one layer recomputed at a time.
    checkpointed = TrainingSettings.from_params({"per_device_train_batch_size": 2, "lora": {"r": 4},
                                                 "gradient_checkpointing": True})
    assert estimate_training_memory(1.0, qlora, checkpointed, shape, 5, 1.0).activations == (
        tokens * 10 * (2 * 3 + 80) + tokens * 100 * 8)
    # Long rows: the answer-window loss still projects only 64 positions per row onto the vocabulary.
    long_rows = estimate_training_memory(1.0, qlora, settings, shape, 512, 1.0)
    assert long_rows.activations == 2 * 512 * 10 * 3 * 80 + 2 * 64 * 100 * 8


def test_memory_estimate_matches_the_h100_measurement():
    """6.7B Llama shape, batch 8 of rows up to 136 tokens, measured with benchmarks/bench_gpu_paths.py:
    training peak 20.5 GiB for bf16 LoRA and 14.1 GiB for QLoRA."""
    shape = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 49152}
    settings = TrainingSettings.from_params({"per_device_train_batch_size": 8})
    lora = ComputePlan("cuda", torch.bfloat16, True, False, False, "test")
    qlora = ComputePlan("cuda", torch.bfloat16, True, False, True, "test")
    for plan, measured in ((lora, 20.5), (qlora, 14.1)):
        estimate = estimate_training_memory(6.68, plan, settings, shape, 136, margin=1.0).total / 2**30
        assert measured * 0.9 < estimate < measured * 1.15, (plan.precision_name, estimate)


def test_embedded_model_passes(tmp_path, embedded_model):
    verdict = _verdict(tmp_path)
    assert {status for status, _ in verdict.values()} == {PASS}, verdict
    assert "answers {'fake': 'fake<|im_end|>'" in verdict["tokenizer and template"][1]


def test_a_7b_model_on_this_machine_says_why_it_will_not_run(tmp_path):
    verdict = _verdict(tmp_path, model={"name": "Qwen2.5-7B-Instruct", "max_length": 512})
    status, detail = verdict["model resolvable"]
    assert status == FAIL and "Qwen/Qwen2.5-7B-Instruct" in detail and "huggingface" in detail
    status, detail = verdict["memory"]
    if not torch.cuda.is_available():
        assert status == FAIL and "will not fit" in detail and "7.62B params" in detail


def test_unwritable_output_folder_and_too_few_examples(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    data_file = tmp_path / "few.jsonl"
    data_file.write_text("\n".join(json.dumps({"instruction": "Q", "input": f"t{i}", "output": "fake"})
                                   for i in range(5)))
    try:
        verdict = _verdict(tmp_path, data={**DATA, "path": str(data_file)},
                           preflight={"output_dirs": [str(locked / "sub")], "min_free_disk_gb": 0.01})
    finally:
        locked.chmod(0o700)
    if os.geteuid() != 0:  # root writes anywhere
        assert verdict["output folders writable"][0] == FAIL
    status, detail = verdict["dataset"]
    assert status == FAIL
    assert "'fake' has 5, needs 200" in detail and "'legitimate' has 0, needs 200" in detail


def test_bad_record_and_unknown_setting_fail(tmp_path):
    data_file = tmp_path / "bad.jsonl"
    data_file.write_text('{"instruction": "Q", "output": "fake"}\n{"instruction": "Q", "output": "maybe"}\n')
    verdict = _verdict(tmp_path, data={**DATA, "path": str(data_file)}, training={"learnin_rate": 1})
    assert verdict["dataset"][0] == FAIL and "bad.jsonl:2: unknown label 'maybe'" in verdict["dataset"][1]
    assert verdict["settings"][0] == FAIL and "training.learnin_rate" in verdict["settings"][1]


def test_registry_entries_and_unknown_keys():
    entry = ModelEntry.from_registry("chatglm3-6b", REGISTRY)
    assert entry.trust_remote_code and entry.lora_target_modules == ("query_key_value",)
    assert not ModelEntry.from_registry("Mistral-7B-v0.1", REGISTRY).chat_template
    assert ModelEntry.from_registry("org/unlisted", REGISTRY).hf_id == "org/unlisted"
    with pytest.raises(ValueError, match=r"model_registry\.x has unknown key\(s\) \['hf'\]"):
        ModelEntry.from_registry("x", {"x": {"hf": "a/b"}})
    for name in ("Llama-3.1-8B-Instruct", "Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct-1M", "Qwen1.5-7B",
                 "chatglm3-6b", "Mistral-7B-v0.1", "Baichuan2-7B-Chat", "SmolLM2-135M-Instruct"):
        assert ModelEntry.from_registry(name, REGISTRY).params_b


def test_missing_model_error_says_where_it_looked(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"Looked for: local path .*nowhere; HF id 'org/nowhere'"):
        registry = {"org/nowhere": {"hf_id": "org/nowhere", "path": str(tmp_path / "nowhere")}}
        resolve_model("org/nowhere", tmp_path, registry)


def test_preflight_pipeline_stops_the_run_on_failure(tmp_path):
    catalog = DataCatalog({
        "params:data": MemoryDataset(DATA),
        "params:model": MemoryDataset({"name": "Qwen2.5-7B-Instruct"}),
        "params:model_registry": MemoryDataset(REGISTRY),
        "params:training": MemoryDataset(TRAINING),
        "params:preflight": MemoryDataset({"output_dirs": [str(tmp_path)], "min_free_disk_gb": 0.01}),
        "preflight.reporting.verdict": MemoryDataset(),
        "preflight.int.passed": MemoryDataset(),
    })
    with pytest.raises(PreflightError, match="preflight FAILED"):
        SequentialRunner().run(create_pipeline(), catalog)
    assert (catalog.load("preflight.reporting.verdict")["status"] == FAIL).any()  # the verdict was kept


def test_multiclass_preflight_checks_the_labels_found_in_the_data(tmp_path, liar_dir):
    """A multi-class task without data.labels: the template check renders the data's own labels, and every
    label must have enough examples."""
    data = {"task": "multiclass_classification", "path": str(liar_dir / "train.tsv"), "format": "tsv",
            "header": False, "columns": {"id": 0, "output": 1, "input": 2}, "instruction": "How true is this?",
            "train_per_class": 30, "test_per_class": 30}
    verdict = _verdict(tmp_path, data=data)
    assert verdict["tokenizer and template"][0] == PASS and "half-true" in verdict["tokenizer and template"][1]
    assert verdict["dataset"][0] == PASS
    short = _verdict(tmp_path, data={**data, "train_per_class": 900})
    assert short["dataset"][0] == FAIL and "'pants-fire' has" in short["dataset"][1]


def test_open_task_preflight(tmp_path, squad_file):
    """QA and structured: the template renders real targets, sizes count examples, QA needs a file and (split by
    article) two articles."""
    qa = {"task": "qa", "format": "squad", "path": str(squad_file), "train_per_class": 100, "test_per_class": 100}
    verdict = _verdict(tmp_path, data=qa)
    assert verdict["dataset"][0] == PASS and "702 unanswerable questions left out" in verdict["dataset"][1]
    assert verdict["tokenizer and template"][0] == PASS
    assert _verdict(tmp_path, data={**qa, "train_per_class": 700})["dataset"][0] == FAIL
    missing = _verdict(tmp_path, data={**qa, "path": None})
    assert missing["dataset"][0] == FAIL and "data.format=squad" in missing["dataset"][1]
    structured = _verdict(tmp_path, data={"task": "structured", "path": None, "train_per_class": 100,
                                          "test_per_class": 100})
    assert structured["dataset"][0] == PASS and '"figure"' in structured["tokenizer and template"][1]
