"""Preflight: verdicts in seconds, before any training, with the reason in numbers."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from finetune_predictor.modeling.hardware import ComputePlan
from finetune_predictor.modeling.memory_estimate import estimate_training_memory, model_shape
from finetune_predictor.modeling.model_session import resolve_model
from finetune_predictor.modeling.models import ModelEntry, ModelNotFoundError
from finetune_predictor.pipelines.preflight import create_pipeline
from finetune_predictor.preflight import FAIL, PASS, SKIP, PreflightError, format_verdict, run_checks
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
    assert verdict["tokenizer and template"][0] == SKIP  # follows from the missing model: not a second failure
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


def test_bad_record_fails_the_dataset_check(tmp_path):
    data_file = tmp_path / "bad.jsonl"
    data_file.write_text('{"instruction": "Q", "output": "fake"}\n{"instruction": "Q", "output": "maybe"}\n')
    verdict = _verdict(tmp_path, data={**DATA, "path": str(data_file)})
    assert verdict["dataset"][0] == FAIL and "bad.jsonl:2: unknown label 'maybe'" in verdict["dataset"][1]
    assert "(fix: correct the record, or set data.on_invalid=quarantine" in verdict["dataset"][1]


@pytest.mark.parametrize(("group", "values", "named"), [
    ("training", {"learnin_rate": 1}, "training.learnin_rate (did you mean training.learning_rate?)"),
    ("data", {**DATA, "train_per_clas": 3}, "data.train_per_clas (did you mean data.train_per_class?)"),
    ("data", {**DATA, "train_per_class": "abc"}, "data.train_per_class must be an integer, got 'abc'"),
    ("model", {"name": "SmolLM2-135M-Instruct", "quantisation": "4bit"}, "model.quantisation"),
    ("preflight", {"output_dirs": ["x"], "memory_margin": 0.5}, "preflight.memory_margin must be >= 1.0"),
])
def test_a_wrong_setting_fails_before_anything_loads(tmp_path, group, values, named):
    """Issue 18: typos and wrong types in data.* / model.* were silently ignored (or died later with a bare
    int() error); now the settings row names the setting and the checks that would load anything are skipped."""
    verdict = _verdict(tmp_path, **{group: values})
    assert verdict["settings"][0] == FAIL and named in verdict["settings"][1], verdict["settings"]
    for name in ("model resolvable", "tokenizer and template", "dataset", "memory"):
        assert verdict[name][0] == SKIP, (name, verdict[name])


def test_every_group_is_checked_when_the_node_passes_them_all(tmp_path):
    """The preflight node gets every parameter group: evaluation.* typos and values fail too."""
    parameters = {"data": DATA, "model": {"name": "SmolLM2-135M-Instruct"}, "training": TRAINING,
                  "evaluation": {"batch_sise": 4, "engine": "foo"}, "forecast": {"min_size": 3}}
    table = run_checks(DATA, parameters["model"], REGISTRY, TRAINING,
                       {"output_dirs": [str(tmp_path)], "min_free_disk_gb": 0.01}, parameters)
    detail = table.set_index("name").loc["settings", "detail"]
    assert "evaluation.batch_sise (did you mean evaluation.batch_size?)" in detail
    assert "evaluation.engine must be one of auto, hf, vllm, got 'foo'" in detail
    assert "forecast.min_size (did you mean forecast.min_sizes?)" in detail


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


def test_preflight_pipeline_stops_the_run_on_failure(tmp_path, capsys):
    params = {"data": DATA, "model": {"name": "Qwen2.5-7B-Instruct"}, "model_registry": REGISTRY,
              "training": TRAINING, "preflight": {"output_dirs": [str(tmp_path)], "min_free_disk_gb": 0.01}}
    catalog = DataCatalog({
        **{f"params:{name}": MemoryDataset(values) for name, values in params.items()},
        "parameters": MemoryDataset(params),
        "preflight.reporting.verdict": MemoryDataset(),
        "preflight.int.passed": MemoryDataset(),
    })
    with pytest.raises(PreflightError, match=r"preflight FAILED: \d check\(s\) failed \(model resolvable") as info:
        SequentialRunner().run(create_pipeline(), catalog)
    assert (catalog.load("preflight.reporting.verdict")["status"] == FAIL).any()  # the verdict was kept
    # The table is printed once; the error names the failed checks and points at it instead of repeating it.
    assert capsys.readouterr().out.count("Preflight verdict") == 1
    assert "Preflight verdict" not in str(info.value) and "verdict above" in info.value.where


def test_the_verdict_table_says_failed_or_passed():
    table = pd.DataFrame([{"name": "settings", "status": FAIL, "detail": "x"},
                                            {"name": "memory", "status": SKIP, "detail": "skipped"}])
    assert format_verdict(table).strip().endswith("preflight FAILED: 1 check(s) failed")


# Peak RSS added by two real LoRA steps of the embedded model on a CPU, batch 8 of the bundled task's longest
# rows (131 tokens): benchmarks/cpu_training_peak_rss.py, measured on the project's 2-core CPU.
_MEASURED_CPU_GIB = {"fp32": (2.31, 2.59), "bf16": (2.26, 2.26)}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_memory_estimate_of_the_embedded_model_matches_its_measured_peak_rss(embedded_model, autocast):
    """Issue 18: the default 135M model was estimated at ~11 GiB, which contradicts "runs on a laptop CPU"; the
    estimate took every row at model.max_length=512 (the bundled rows are ~131 tokens). At the measured row
    length the estimate is within a sane bound of the measured peak RSS (never below it by much)."""
    plan = ComputePlan("cpu", torch.float32, autocast, False, False, "test")
    settings = TrainingSettings.from_params({"per_device_train_batch_size": 8})
    estimate = estimate_training_memory(0.135, plan, settings, model_shape(embedded_model), 131, margin=1.0)
    low, high = _MEASURED_CPU_GIB["bf16" if autocast else "fp32"]
    assert 0.85 * high < estimate.total / 2**30 < 1.35 * low, estimate.describe()


def test_the_default_run_is_estimated_at_a_laptop_s_memory(tmp_path, embedded_model):
    """The default mini_test100 (embedded model, bundled task): the rows are measured from the data, and the
    whole estimate (margin included) stays under 4 GiB whatever the CPU's precision."""
    for precision in ("fp32", "auto"):
        status, detail = _verdict(tmp_path, training={**TRAINING, "precision": precision})["memory"]
        assert status == PASS and "(the data's longest row; model.max_length=512)" in detail, detail
        rows = int(detail.split("rows of up to ")[1].split()[0])
        needs = float(detail.split("needs ~")[1].split()[0])
        assert 64 < rows < 512 and needs < 4.0, detail


def test_memory_advice_is_a_whole_sentence(tmp_path):
    """The verdict for a model that does not fit ended "... or a smaller model would"."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the 7B model may fit")
    _, detail = _verdict(tmp_path, model={"name": "Qwen2.5-7B-Instruct", "max_length": 512})["memory"]
    assert "it would fit as QLoRA on a GPU with >= " in detail
    assert detail.endswith("or with a smaller model or a smaller training.per_device_train_batch_size"), detail


def test_bundled_task_too_small_for_the_sizes(tmp_path):
    """data.train_per_class beyond what the bundled generator makes passed the preflight and failed later."""
    status, detail = _verdict(tmp_path, data={**DATA, "train_per_class": 100000})["dataset"]
    assert status == FAIL and "data.synthetic.num_records=24000" in detail


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


def test_an_unexpected_error_in_a_check_says_so_and_keeps_its_traceback(monkeypatch, caplog):
    """A bare ValueError may be our bug: the FAIL row says it was unexpected, and --verbose logs the traceback
    instead of losing it behind the verdict."""
    import logging

    from finetune_predictor import preflight
    from finetune_predictor.errors import VERBOSE_ENV

    def broken():
        raise ValueError("max() arg is an empty sequence")

    row = preflight._guard("memory", broken)
    assert row.status == preflight.FAIL and "unexpected ValueError" in row.detail
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with caplog.at_level(logging.ERROR, logger="finetune_predictor.preflight"):
        preflight._guard("memory", broken)
    assert any(record.exc_info for record in caplog.records)
