"""Inference for evaluation: label scoring by likelihood (primary) and greedy generation (second view).

Both feed the model exactly the prompt ids of :class:`PromptFormatter`, the same ids training used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from finetune_predictor.modeling.batching import attention_mask_of, left_pad, length_grouped_batches, position_ids_of
from finetune_predictor.modeling.chat_format import PromptFormatter


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def _prompts(formatter: PromptFormatter, records: Sequence[dict[str, Any]], reserve: int) -> list[list[int]]:
    """Every record's prompt ids, built once (the formatter counts each record it has to shorten once)."""
    return [formatter.prompt_ids(str(r["instruction"]), str(r.get("input") or ""), reserve=reserve) for r in records]


@torch.no_grad()
def score_candidates(
    model: Any,
    formatter: PromptFormatter,
    records: Sequence[dict[str, Any]],
    candidates: Sequence[str],
    batch_size: int = 16,
    group_by_length: bool = True,
) -> np.ndarray:
    """Log-probability of each candidate answer (with its end-of-turn token) after each prompt.

    Returns an ``(n_records, n_candidates)`` array in the order of ``records``. Each batch of prompts goes
    through the model once; the candidates (a few tokens each) are then scored on top of the prompts'
    key/value cache, so the cost is one forward pass over the prompts whatever the number of labels.
    With ``group_by_length`` the batches hold prompts of similar length (less padding, same scores).
    """
    model.eval()
    device = _device_of(model)
    answer_ids = [formatter.answer_ids(candidate) for candidate in candidates]
    pad_id = formatter.tokenizer.pad_token_id
    all_prompts = _prompts(formatter, records, reserve=max(len(ids) for ids in answer_ids))
    scores = np.zeros((len(records), len(candidates)), dtype=np.float64)
    for rows in length_grouped_batches([len(p) for p in all_prompts], batch_size, group_by_length):
        prompts = [all_prompts[row] for row in rows]
        input_ids, attention_mask = left_pad(prompts, pad_id).to(device), attention_mask_of(prompts).to(device)
        position_ids = position_ids_of(attention_mask)
        prompt_out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=True, logits_to_keep=1)
        first_log_probs = torch.log_softmax(prompt_out.logits[:, -1, :].float(), dim=-1)
        cache, cache_name = _cache_of(prompt_out), _cache_argument(model)
        next_position = position_ids[:, -1:] + 1
        for cand_index, ids in enumerate(answer_ids):
            total = first_log_probs[:, ids[0]].clone()
            if len(ids) > 1:
                continuation = torch.tensor([ids[:-1]], device=device).expand(len(rows), -1)
                mask = torch.cat([attention_mask, torch.ones_like(continuation)], dim=1)
                positions = next_position + torch.arange(len(ids) - 1, device=device)[None, :]
                out = model(input_ids=continuation, attention_mask=mask, position_ids=positions,
                            use_cache=True, **{cache_name: cache})
                log_probs = torch.log_softmax(out.logits.float(), dim=-1)
                targets = torch.tensor(ids[1:], device=device)[None, :, None].expand(len(rows), -1, 1)
                total += log_probs.gather(-1, targets).squeeze(-1).sum(-1)
                cache.crop(-(len(ids) - 1))  # drop this candidate's keys before scoring the next one
            scores[rows, cand_index] = total.cpu().numpy()
    return scores


def _cache_argument(model: Any) -> str:
    """The name this transformers release takes the key/value cache by: ``cache`` from 5.2x on (where
    ``past_key_values`` still works but warns on every call), ``past_key_values`` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)  # read lazily: the old name warns on releases that renamed it
    return cache if cache is not None else output.past_key_values


def stop_token_ids(formatter: PromptFormatter) -> list[int]:
    """The end-of-turn token the template closes an answer with, plus the tokenizer's EOS."""
    tokenizer = formatter.tokenizer
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    ids.add(formatter.answer_ids("x")[-1])
    return sorted(ids)


class _StopWhen(StoppingCriteria):
    """Stops each row once the task says its answer is complete (a JSON object closed), so a structured
    answer does not run on to the token budget."""

    def __init__(self, tokenizer: Any, prompt_length: int, done: Callable[[str], bool]) -> None:
        self.tokenizer, self.prompt_length, self.done = tokenizer, prompt_length, done

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([self.done(text) for text in texts], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_answers(
    model: Any,
    formatter: PromptFormatter,
    records: Sequence[dict[str, Any]],
    max_new_tokens: int = 8,
    batch_size: int = 16,
    stop: Callable[[str], bool] | None = None,
    group_by_length: bool = True,
) -> list[str]:
    """Greedy completions of each prompt with Hugging Face generate (CPU and GPU), in the order of
    ``records``. Each row stops at the end-of-turn token (``eos_token_id``: a finished row only receives
    padding, and the batch ends when every row has finished), or earlier where ``stop(text so far)`` says
    the answer is complete. With ``group_by_length`` the batches hold prompts of similar length."""
    model.eval()
    device = _device_of(model)
    tokenizer = formatter.tokenizer
    stops = stop_token_ids(formatter)
    all_prompts = _prompts(formatter, records, reserve=max_new_tokens)
    outputs: list[str] = [""] * len(records)
    for rows in length_grouped_batches([len(p) for p in all_prompts], batch_size, group_by_length):
        prompts = [all_prompts[row] for row in rows]
        input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id), attention_mask_of(prompts)
        criteria = (StoppingCriteriaList([_StopWhen(tokenizer, input_ids.shape[1], stop)]) if stop is not None
                    else None)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=criteria,
        )
        for row, new_tokens in zip(rows, generated[:, input_ids.shape[1]:], strict=True):
            outputs[row] = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    return outputs


def vllm_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def generate_answers_vllm(
    model_path: str,
    formatter: PromptFormatter,
    records: Sequence[dict[str, Any]],
    adapter_dir: str | None,
    max_new_tokens: int = 8,
    max_lora_rank: int = 64,
    gpu_memory_utilization: float = 0.6,
    quantization: str | None = None,
) -> list[str]:
    """Greedy completions with vLLM, the LoRA adapter applied per request (GPU only). ``quantization=
    "bitsandbytes"`` quantizes the base in flight, so a QLoRA adapter generates on a 4-bit base as it was
    trained."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    llm = LLM(
        model=model_path,
        enable_lora=adapter_dir is not None,
        max_lora_rank=max_lora_rank,
        gpu_memory_utilization=gpu_memory_utilization,
        quantization=quantization,
        seed=0,
    )
    sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_token_ids(formatter))
    prompts = [
        TokensPrompt(prompt_token_ids=formatter.prompt_ids(str(r["instruction"]), str(r.get("input") or ""),
                                                           reserve=max_new_tokens))
        for r in records
    ]
    lora_request = LoRARequest("adapter", 1, adapter_dir) if adapter_dir else None
    results = llm.generate(prompts, sampling, lora_request=lora_request)
    return [result.outputs[0].text.strip() for result in results]
