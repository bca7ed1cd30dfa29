"""One released variant evaluated on the run's test set: predictions, metrics, load time, peak memory, tokens/s.

The merged HF folder is evaluated in the project's own model session (:func:`evaluation.predict`, the engine
the run's settings name); a GGUF through llama.cpp (:mod:`llama_cpp_eval`), on the same prompt ids and with
the same label scoring, parser and metrics. Each variant runs in a fresh process by default
(``release.isolate``), so its peak memory and load time are its own, not what the variant before it left.

Peak memory is the resident set size the variant added: the process's high-water mark (``VmHWM``, reset
before the load where Linux allows it) minus its resident size before the load. On CUDA the HF engine's
``max_memory_allocated`` is recorded beside it; llama.cpp's GPU memory is not measured.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_predictor.data.records import reference_lists
from finetune_predictor.modeling.artifacts import verify_manifest
from finetune_predictor.modeling.evaluation import add_label_scores, label_scores, max_new_tokens, metrics_of, predict
from finetune_predictor.modeling.gguf_export import check_gguf
from finetune_predictor.modeling.model_session import ModelSession, open_session
from finetune_predictor.tasks import Task, build_task

logger = logging.getLogger(__name__)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak resident size to its current one (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryWatch:
    """The resident memory a block adds at its peak, in MiB (None where /proc is not there)."""

    def __enter__(self) -> MemoryWatch:
        self.reset = _reset_peak()
        self.before = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM")
        self.peak_mb = (peak - self.before) / 1024 if peak is not None and self.before is not None else None
        self.process_peak_mb = peak / 1024 if peak is not None else None


def _benchmark_prompts(session: ModelSession, records: list[dict[str, Any]], count: int, reserve: int) -> list:
    return [session.formatter.prompt_ids(str(r["instruction"]), str(r.get("input") or ""), reserve=reserve)
            for r in records[:count]]


def benchmark_hf(model: Any, prompts: list[list[int]], new_tokens: int) -> dict[str, float]:
    """Prompt and generation throughput of an HF model at batch 1: one forward per prompt (prompt tokens/s),
    then ``generate`` forced to ``new_tokens`` greedy tokens, less the prompt's own forward time."""
    import torch

    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prompt_tokens, prompt_s, generation_s = 0, 0.0, 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            sync()
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            sync()
            forward = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
            sync()
            generation_s += max(time.perf_counter() - start - forward, 1e-9)
            prompt_tokens, prompt_s = prompt_tokens + len(prompt), prompt_s + forward
    return {"prompt_tokens": prompt_tokens, "prompt_s": prompt_s, "generated_tokens": new_tokens * len(prompts),
            "generation_s": generation_s}


def _evaluate_hf(spec: dict[str, Any], session: ModelSession, task: Task, test: pd.DataFrame) -> dict[str, Any]:
    import torch

    verify_manifest(spec["path"], kind="merged model")
    session = session.for_folder(spec["path"], name=f"{spec['model']['name']} (merged)")
    cuda = session.plan.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with MemoryWatch() as memory:
        start = time.perf_counter()
        model = session.load_model(None)
        load_s = time.perf_counter() - start
        bench = benchmark_hf(model, _benchmark_prompts(session, spec["records"], spec["benchmark_prompts"],
                                                       spec["benchmark_new_tokens"]), spec["benchmark_new_tokens"])
        frame = predict(test, task, session, {**spec["evaluation"]}, model=model)
        del model
    perf = {"load_s": load_s, **bench, "threads": torch.get_num_threads(), "device": session.plan.device,
            "precision": session.plan.precision_name}
    if cuda:
        perf["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return _result(spec, frame, task, perf, memory, engine=f"model session ({frame['engine'].iloc[0]})")


def _evaluate_gguf(spec: dict[str, Any], session: ModelSession, task: Task, test: pd.DataFrame) -> dict[str, Any]:
    from finetune_predictor.modeling import llama_cpp_eval

    check = check_gguf(spec["path"], spec.get("sha256"))
    threads = int(spec.get("threads") or os.cpu_count() or 1)
    formatter, records = session.formatter, spec["records"]
    with MemoryWatch() as memory:
        start = time.perf_counter()
        llm = llama_cpp_eval.load_gguf(spec["path"], n_ctx=formatter.max_length + 8, threads=threads,
                                       gpu_layers=int(spec.get("gpu_layers", 0)))
        load_s = time.perf_counter() - start
        candidates = task.candidates() or []
        template = llama_cpp_eval.template_check(llm, formatter, records, candidates)
        bench = llama_cpp_eval.benchmark_gguf(llm, _benchmark_prompts(session, records, spec["benchmark_prompts"],
                                                                      spec["benchmark_new_tokens"]),
                                              spec["benchmark_new_tokens"])
        frame = _predict_gguf(llm, test, task, session, spec["evaluation"])
        del llm
    perf = {"load_s": load_s, **bench, "threads": threads, "device": "cuda" if spec.get("gpu_layers") else "cpu",
            "gpu_layers": int(spec.get("gpu_layers", 0)), "tensor_types": check["tensor_types"]}
    return {**_result(spec, frame, task, perf, memory, engine="llama.cpp"), "template_check": template}


def _predict_gguf(llm: Any, test: pd.DataFrame, task: Task, session: ModelSession,
                  evaluation_params: dict[str, Any]) -> pd.DataFrame:
    """:func:`evaluation.predict`'s table, computed by llama.cpp: label scores (the run's
    ``evaluation.label_scoring``) and greedy generation through the task's parser."""
    from finetune_predictor.modeling import llama_cpp_eval

    formatter, records = session.formatter, test.to_dict("records")
    truncated_before = formatter.truncated_prompts
    frame = pd.DataFrame({"id": test["id"].to_numpy(), "reference": [task.target(r) for r in records]})
    if (references := reference_lists(test)) is not None:
        frame["references"] = references
    candidates = task.candidates()
    if candidates:
        def scorer(rows: list[dict[str, Any]]) -> Any:
            return llama_cpp_eval.score_candidates_gguf(llm, formatter, rows, candidates)

        rule = str(evaluation_params.get("label_scoring", "sum"))
        scores = label_scores(scorer(records), rule, None, session, records, candidates, scorer=scorer)
        add_label_scores(frame, task, candidates, scores)
    truncated = formatter.truncated_prompts - truncated_before
    if evaluation_params.get("generation", True) or not candidates:
        budget = max_new_tokens(task, evaluation_params, formatter)
        texts = llama_cpp_eval.generate_gguf(llm, formatter, records, budget, stop=getattr(task, "stop", None))
        frame["generated_text"] = texts
        frame["generated_prediction"] = [task.parse(text) for text in texts]
    frame["engine"] = "llama.cpp"
    frame["prompts_truncated"] = truncated if candidates else formatter.truncated_prompts - truncated_before
    return frame


def _result(spec: dict[str, Any], frame: pd.DataFrame, task: Task, perf: dict[str, Any], memory: MemoryWatch,
            engine: str) -> dict[str, Any]:
    perf = {**perf, "peak_memory_mb": memory.peak_mb, "process_peak_rss_mb": memory.process_peak_mb,
            "peak_memory_reset": memory.reset, "isolated": bool(spec.get("isolated"))}
    return {"variant": spec["variant"], "engine": engine, "metrics": metrics_of(frame, task), "perf": perf,
            "predictions": frame.to_dict("records")}


def evaluate_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one variant (``spec``: variant, kind hf|gguf, path, sha256, the source run's model, registry,
    precision, data and evaluation settings, its training targets, the test records, the benchmark sizes).
    Picklable in and out, so it runs in a child process as well as here."""
    session = open_session(spec["model"], spec["model_registry"], "evaluate", spec["precision"])
    task = build_task(spec["data"], spec["seen_targets"])
    test = pd.DataFrame(spec["records"])
    evaluate = _evaluate_hf if spec["kind"] == "hf" else _evaluate_gguf
    return evaluate(spec, session, task, test)


def run_variant(spec: dict[str, Any], isolate: bool) -> dict[str, Any]:
    """:func:`evaluate_variant` in a fresh spawned process (``isolate``) or in this one."""
    if not isolate:
        return evaluate_variant(spec)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(evaluate_variant, {**spec, "isolated": True}).result()
