"""Evaluation of a GGUF file through llama.cpp (the ``llama-cpp-python`` bindings of the release extra).

The GGUF is scored as the HF model is: on the project's prompt ids (:class:`PromptFormatter`), label scoring
from the logits (the summed log-probability of each label's tokens and its end-of-turn token) and greedy
generation through the task's parser, so a difference in metrics is a difference in weights alone. Whether
the file carries the right tokenizer and chat template is checked apart (:func:`template_check`): llama.cpp
renders each test prompt with the GGUF's own template and tokenizes it with the GGUF's own vocabulary, and
those tokens must equal the HF tokenizer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetune_predictor.modeling.chat_format import PromptFormatter
from finetune_predictor.modeling.scoring import stop_token_ids


def load_gguf(path: str | Path, n_ctx: int, threads: int | None = None, gpu_layers: int = 0) -> Any:
    """The GGUF in llama.cpp, logits of the last evaluated token only, quiet."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 n_gpu_layers=gpu_layers, logits_all=False, verbose=False, seed=0)


def _last_log_probs(llm: Any) -> np.ndarray:
    """log-softmax of the logits llama.cpp computed for the last token it evaluated."""
    import llama_cpp

    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    logits = logits.astype(np.float64)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _evaluate(llm: Any, tokens: Sequence[int], keep: int = 0) -> None:
    """Evaluate ``tokens`` after the first ``keep`` tokens already in llama.cpp's cache (the rest dropped)."""
    llm.n_tokens = keep
    llm.eval(list(tokens))


def score_candidates_gguf(llm: Any, formatter: PromptFormatter, records: Sequence[dict[str, Any]],
                          candidates: Sequence[str]) -> np.ndarray:
    """Log-probability of each candidate (its tokens and the end-of-turn token) after each prompt: the prompt
    is evaluated once, then each candidate's tokens on top of it, dropped again before the next candidate."""
    answer_ids = [formatter.answer_ids(candidate) for candidate in candidates]
    reserve = max(len(ids) for ids in answer_ids)
    scores = np.zeros((len(records), len(candidates)))
    for row, record in enumerate(records):
        prompt = formatter.prompt_ids(str(record["instruction"]), str(record.get("input") or ""), reserve=reserve)
        _evaluate(llm, prompt)
        first = _last_log_probs(llm)
        for column, ids in enumerate(answer_ids):
            total = first[ids[0]]
            for position in range(1, len(ids)):
                _evaluate(llm, [ids[position - 1]], keep=len(prompt) + position - 1)
                total += _last_log_probs(llm)[ids[position]]
            scores[row, column] = total
    return scores


def generate_gguf(llm: Any, formatter: PromptFormatter, records: Sequence[dict[str, Any]], max_new_tokens: int,
                  stop: Callable[[str], bool] | None = None) -> list[str]:
    """Greedy completions (argmax of the logits, no sampler settings), stopping at the end-of-turn token, at
    ``max_new_tokens``, or where ``stop(text so far)`` says the answer is complete; decoded by the HF tokenizer
    as the HF engine decodes."""
    stops, tokenizer, texts = set(stop_token_ids(formatter)), formatter.tokenizer, []
    for record in records:
        prompt = formatter.prompt_ids(str(record["instruction"]), str(record.get("input") or ""),
                                      reserve=max_new_tokens)
        _evaluate(llm, prompt)
        new: list[int] = []
        while len(new) < max_new_tokens:
            token = int(np.argmax(_last_log_probs(llm)))
            if token in stops:
                break
            new.append(token)
            if stop is not None and stop(tokenizer.decode(new, skip_special_tokens=True)):
                break
            _evaluate(llm, [token], keep=len(prompt) + len(new) - 1)
        texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return texts


def benchmark_gguf(llm: Any, prompts: Sequence[Sequence[int]], new_tokens: int) -> dict[str, float]:
    """Prompt and generation throughput at batch 1: each prompt evaluated at once (prompt tokens/s), then
    ``new_tokens`` greedy tokens one at a time, end-of-turn ignored so every prompt decodes the same count."""
    prompt_tokens, prompt_s, generated, generation_s = 0, 0.0, 0, 0.0
    for prompt in prompts:
        start = time.perf_counter()
        _evaluate(llm, prompt)
        prompt_s += time.perf_counter() - start
        prompt_tokens += len(prompt)
        start = time.perf_counter()
        for step in range(new_tokens):
            token = int(np.argmax(_last_log_probs(llm)))
            _evaluate(llm, [token], keep=len(prompt) + step)
        generation_s += time.perf_counter() - start
        generated += new_tokens
    return {"prompt_tokens": prompt_tokens, "prompt_s": prompt_s, "generated_tokens": generated,
            "generation_s": generation_s}


def template_check(llm: Any, formatter: PromptFormatter, records: Sequence[dict[str, Any]],
                   answers: Sequence[str] = ()) -> dict[str, Any]:
    """Whether the GGUF's own chat template and vocabulary give the HF tokenizer's tokens: each record's prompt
    rendered by llama-cpp-python's Jinja2 formatter from the template in the file, tokenized by llama.cpp,
    against the formatter's (untruncated) prompt ids; and each answer's tokens likewise. Without the
    project's chat template (a base model's fallback template) the text is the same and only the vocabulary
    is compared."""
    template = llm.metadata.get("tokenizer.chat_template")
    mismatches: list[dict[str, Any]] = []
    for record in records:
        instruction, text = str(record["instruction"]), str(record.get("input") or "")
        expected = formatter.tokenizer(formatter.prompt_text(instruction, text), add_special_tokens=False)["input_ids"]
        rendered = (_render(template, formatter, formatter.messages(instruction, text))
                    if formatter.uses_chat_template else formatter.prompt_text(instruction, text))
        actual = llm.tokenize(rendered.encode(), add_bos=False, special=True) if rendered is not None else []
        if list(actual) != list(expected):
            mismatches.append({"id": str(record.get("id", "")), "expected": len(expected), "actual": len(actual)})
    answer_mismatches = [answer for answer in answers
                         if llm.tokenize(formatter.completion_text(answer).encode(), add_bos=False, special=True)
                         != formatter.answer_ids(answer)]
    return {"chat_template_in_file": template is not None, "prompts_checked": len(records),
            "prompts_matching": len(records) - len(mismatches), "answers_checked": len(answers),
            "answers_matching": len(answers) - len(answer_mismatches), "first_mismatch": mismatches[:1],
            "answer_mismatches": answer_mismatches[:3]}


def _render(template: str | None, formatter: PromptFormatter, messages: list[dict[str, str]]) -> str | None:
    """``messages`` rendered with the GGUF's template as llama-cpp-python's chat completion does."""
    if template is None:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tokenizer = formatter.tokenizer
    chat = Jinja2ChatFormatter(template, eos_token=tokenizer.eos_token or "", bos_token=tokenizer.bos_token or "",
                               add_generation_prompt=True)
    return chat(messages=messages).prompt
