"""Inference and training mechanics on a tiny random Llama that uses the real tokenizer."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

from finetune_predictor.data.synthetic_news import iter_articles
from finetune_predictor.modeling.hardware import choose_compute_plan
from finetune_predictor.modeling.model_session import load_causal_lm
from finetune_predictor.modeling.scoring import generate_answers, score_candidates
from finetune_predictor.modeling.training import (
    AdapterNotTrainedError,
    build_training_rows,
    train_lora,
    verify_adapter,
)
from finetune_predictor.settings_schema import TrainingSettings

CANDIDATES = ["fake", "legitimate"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_session):
    plan = choose_compute_plan("fp32")
    model = load_causal_lm(str(tiny_model_dir), plan)
    return model, tiny_session.formatter


def _naive_scores(model, formatter, records):
    """Full-sequence log-probabilities, one unpadded sequence at a time (the definition)."""
    out = np.zeros((len(records), len(CANDIDATES)))
    for i, record in enumerate(records):
        prompt = formatter.prompt_ids(record["instruction"], record["input"])
        for j, label in enumerate(CANDIDATES):
            answer = formatter.answer_ids(label)
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            positions = range(len(prompt) - 1, len(prompt) + len(answer) - 1)
            out[i, j] = sum(log_probs[p, ids[0, p + 1]].item() for p in positions)
    return out


def test_batched_cached_scores_equal_the_naive_definition(tiny):
    model, formatter = tiny
    records = list(iter_articles(7, seed=11))  # different lengths: exercises left padding
    batched = score_candidates(model, formatter, records, CANDIDATES, batch_size=4)
    np.testing.assert_allclose(batched, _naive_scores(model, formatter, records), atol=1e-4)


def test_label_scoring_passes_the_cache_by_the_name_this_transformers_takes(tiny):
    """transformers 5.2x renamed past_key_values to cache and warns on every call with the old name: the
    warnings made the end-to-end run's output alarming (its no-warning check failed)."""
    import warnings

    model, formatter = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score_candidates(model, formatter, list(iter_articles(3, seed=11)), CANDIDATES, batch_size=3)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_generation_is_greedy_and_batch_independent(tiny):
    model, formatter = tiny
    records = list(iter_articles(5, seed=11))
    together = generate_answers(model, formatter, records, max_new_tokens=4, batch_size=5)
    alone = [generate_answers(model, formatter, [r], max_new_tokens=4, batch_size=1)[0] for r in records]
    assert together == alone


def test_training_saves_a_non_zero_adapter(tiny_session, tmp_path):
    formatter = tiny_session.formatter
    records = list(iter_articles(8, seed=5))
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    settings = TrainingSettings.from_params({"max_steps": 2, "per_device_train_batch_size": 4, "precision": "fp32",
                                             "learning_rate": 1e-2})
    result = train_lora(tiny_session, rows, settings, tmp_path)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert len(result.adapter_sha256["adapter_model.safetensors"]) == 64
    assert result.num_steps == 2
    assert [h["step"] for h in result.loss_history] == [1.0, 2.0]
    assert result.supervised_tokens == sum(len(formatter.answer_ids(r["output"])) for r in records)


def test_training_leaves_no_model_behind(tiny_session, tmp_path, monkeypatch):
    """The Trainer and PEFT hold reference cycles: without a collection, a sweep's next configuration
    starts with the last model still on the GPU (seen on an H100 with a 6.7B model)."""
    from finetune_predictor.modeling import model_session

    loaded = []

    def load_and_track(*args, **kwargs):
        model = load_causal_lm(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(model_session, "load_causal_lm", load_and_track)
    formatter = tiny_session.formatter
    records = list(iter_articles(4, seed=5))
    rows = build_training_rows(formatter, records, [r["output"] for r in records])
    settings = TrainingSettings.from_params({"max_steps": 1, "per_device_train_batch_size": 4, "precision": "fp32"})
    gc.disable()  # only the training code's own collection may free the model
    try:
        train_lora(tiny_session, rows, settings, tmp_path)
        assert loaded and all(ref() is None for ref in loaded)
    finally:
        gc.enable()


def test_zero_lora_b_fails_the_run(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(str(tiny_model_dir), choose_compute_plan("fp32"))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path)  # untrained: B is zero by construction
    with pytest.raises(AdapterNotTrainedError, match="zero"):
        verify_adapter(peft_model, tmp_path)
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(AdapterNotTrainedError, match="lacks"):
        verify_adapter(peft_model, tmp_path)


def test_training_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match=r"training\.learnin_rate"):
        TrainingSettings.from_params({"learnin_rate": 1e-4})
    with pytest.raises(ValueError, match=r"training\.lora\.rank"):
        TrainingSettings.from_params({"lora": {"rank": 8}})


def test_bf16_is_native_only_where_the_kernels_are_not_capped_below_it():
    """An AVX-512-BF16 machine standing in for an AVX2 one (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA) chose bf16
    from the CPU's flags and then ran it emulated, many times slower: the cap decides."""
    from finetune_predictor.modeling.hardware import native_bf16

    flags = "flags : fpu avx2 avx512f avx512_bf16 \n"
    assert native_bf16(flags, {}) and native_bf16(flags, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert not native_bf16(flags, {"ATEN_CPU_CAPABILITY": "avx2"})
    assert not native_bf16(flags, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not native_bf16("flags : fpu avx2 avx512f \n", {})


def test_compute_plan_on_cpu(monkeypatch):
    import finetune_predictor.modeling.hardware as hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    plan = hardware.choose_compute_plan("auto", "4bit")
    assert (plan.device, plan.bf16, plan.load_in_4bit, plan.precision_name) == ("cpu", False, False, "fp32")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.choose_compute_plan("auto").precision_name == "bf16"
    assert hardware.choose_compute_plan("fp32").precision_name == "fp32"
    with pytest.raises(ValueError, match="fp16 is not supported on CPU"):
        hardware.choose_compute_plan("fp16")
    with pytest.raises(ValueError, match=r"training\.precision"):
        hardware.choose_compute_plan("int3")


def test_label_scoring_rules(tiny, tiny_session):
    """sum favours short labels; mean divides by the label's token count; calibrated removes the model's
    prior for each label, measured after a content-free input with the same instruction."""
    from finetune_predictor.modeling.evaluation import CONTENT_FREE_INPUT, label_scores

    model, formatter = tiny
    records = list(iter_articles(4, seed=3))
    log_probs = score_candidates(model, formatter, records, CANDIDATES)
    lengths = np.array([len(formatter.answer_ids(label)) for label in CANDIDATES])
    assert lengths[0] != lengths[1]  # "fake" and "legitimate" differ in length: the bias is real here
    np.testing.assert_allclose(label_scores(log_probs, "sum", model, tiny_session, records, CANDIDATES), log_probs)
    np.testing.assert_allclose(label_scores(log_probs, "mean", model, tiny_session, records, CANDIDATES),
                               log_probs / lengths)
    prior = score_candidates(model, formatter, [{"instruction": records[0]["instruction"],
                                                 "input": CONTENT_FREE_INPUT}], CANDIDATES)
    np.testing.assert_allclose(label_scores(log_probs, "calibrated", model, tiny_session, records, CANDIDATES),
                               log_probs - prior, atol=1e-5)
    with pytest.raises(ValueError, match=r"evaluation\.label_scoring"):
        label_scores(log_probs, "max", model, tiny_session, records, CANDIDATES)


def test_metrics_report_the_share_of_each_predicted_label():
    from finetune_predictor.modeling.evaluation import metrics_of
    from finetune_predictor.tasks import build_task

    task = build_task({"label_positive": "fake", "label_negative": "legitimate"})
    predictions = pd.DataFrame({"reference": ["fake", "legitimate"] * 2, "scored_prediction": ["fake"] * 4,
                                "prob_positive": [0.9, 0.8, 0.7, 0.6]})
    metrics = metrics_of(predictions, task)
    assert metrics["accuracy"] == 0.5 and metrics["predicted_share_fake"] == 1.0
    assert metrics["predicted_share_legitimate"] == 0.0


def test_length_grouped_scores_equal_the_input_order_batches(tiny):
    """Sorting prompts by length before batching changes the padding, never a score or its row."""
    model, formatter = tiny
    records = list(iter_articles(9, seed=21))
    lengths = [len(formatter.prompt_ids(r["instruction"], r["input"])) for r in records]
    assert len(set(lengths)) > 3  # the grouping really reorders
    grouped = score_candidates(model, formatter, records, CANDIDATES, batch_size=4, group_by_length=True)
    plain = score_candidates(model, formatter, records, CANDIDATES, batch_size=4, group_by_length=False)
    np.testing.assert_allclose(grouped, plain, atol=1e-4)
    np.testing.assert_allclose(grouped, _naive_scores(model, formatter, records), atol=1e-4)


def test_length_grouped_generation_equals_the_input_order_batches(tiny):
    model, formatter = tiny
    records = list(iter_articles(9, seed=21))
    grouped = generate_answers(model, formatter, records, max_new_tokens=4, batch_size=4, group_by_length=True)
    plain = generate_answers(model, formatter, records, max_new_tokens=4, batch_size=4, group_by_length=False)
    assert grouped == plain
    assert grouped == [generate_answers(model, formatter, [r], max_new_tokens=4, batch_size=1)[0] for r in records]


def test_length_grouped_batches_cover_every_row_once_longest_first():
    from finetune_predictor.modeling.batching import length_grouped_batches

    batches = length_grouped_batches([3, 9, 1, 9, 5], 2)
    assert batches == [[1, 3], [4, 0], [2]]  # stable: equal lengths keep their order
    assert length_grouped_batches([3, 9, 1], 2, group_by_length=False) == [[0, 1], [2]]


def test_classification_budget_is_the_longest_label_plus_end_of_turn(tiny_session):
    """A null evaluation.max_new_tokens gives a label task the tokens of its longest label and one more for
    the end-of-turn token; an explicit budget and an open task's own budget are kept."""
    from finetune_predictor.modeling.evaluation import max_new_tokens
    from finetune_predictor.tasks import build_task

    formatter = tiny_session.formatter
    tokenizer = formatter.tokenizer
    labels = ["fake", "legitimate", "pants on fire"]
    task = build_task({"task": "multiclass_classification", "labels": labels})
    longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    assert max_new_tokens(task, {"max_new_tokens": None}, formatter) == longest + 1
    assert max_new_tokens(task, {"max_new_tokens": 8}, formatter) == 8
    binary = build_task({"label_positive": "fake", "label_negative": "legitimate"})
    assert max_new_tokens(binary, {}, formatter) == max(len(formatter.answer_ids(label)) for label in binary.labels)
    assert max_new_tokens(build_task({"task": "qa"}), {}, formatter) == 32
