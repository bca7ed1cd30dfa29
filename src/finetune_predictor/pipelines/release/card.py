"""The release's model card (``README.md`` in the release folder), written from the release summary alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

# The table's columns as the card shows them, with their number format.
CARD_COLUMNS = {"variant": ("variant", "{}"), "status": ("status", "{}"), "size_mb": ("size MiB", "{:.1f}"),
                "peak_memory_mb": ("peak memory MiB", "{:.0f}"), "load_s": ("load s", "{:.2f}"),
                "prompt_tokens_per_s": ("prompt tok/s", "{:.0f}"), "generation_tokens_per_s": ("gen tok/s", "{:.1f}"),
                "primary": ("primary", "{:.4f}"), "delta_vs_adapter": ("Δ vs adapter", "{:+.4f}"),
                "binomial_se": ("binomial SE", "{:.4f}"), "agreement_with_adapter": ("agreement", "{:.3f}"),
                "tokens_match": ("tokenizer + template", "{}")}


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        return fmt.format(value).replace("|", "/")
    except (ValueError, TypeError):
        return str(value).replace("|", "/")


def markdown_table(table: pd.DataFrame) -> str:
    """The release table as a Markdown table (the card's columns), with each missing variant's reason below."""
    heads = [head for head, _ in CARD_COLUMNS.values()]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in table.to_dict("records"):
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for key, (_, fmt) in CARD_COLUMNS.items()) + " |")
    notes = [f"- **{row['variant']}**: {row['reason']}" for row in table.to_dict("records")
             if isinstance(row.get("reason"), str) and row["reason"]]
    return "\n".join([*lines, *(["", *notes] if notes else [])])


def _verdict(table: pd.DataFrame) -> list[str]:
    """The release target: no variant down to q8_0 loses more than one binomial SE; q4_k_m states its loss."""
    lines = []
    for row in table.iloc[1:].to_dict("records"):
        if row.get("status") != "evaluated":
            lines.append(f"- {row['variant']}: not evaluated ({row.get('status')}).")
            continue
        loss = -float(row["delta_vs_adapter"]) + 0.0  # + 0.0: no "-0.0000" for an equal metric
        within = "within" if row.get("within_one_se") else "**beyond**"
        lines.append(f"- {row['variant']}: {row['primary_metric']} {row['primary']:.4f}, a loss of {loss:+.4f} "
                     f"({loss / row['binomial_se']:+.2f} SE; {within} one binomial SE of the adapter's), agreeing "
                     f"with the adapter on {row['agreement_with_adapter']:.1%} of the records.")
    return lines


def _files(summary: dict[str, Any]) -> list[str]:
    lines = []
    for name, variant in summary["variants"].items():
        if variant.get("produced") and variant.get("path"):
            size = variant.get("size_bytes", 0) / (1 << 20)
            lines.append(f"- `{Path(variant['path']).name}` ({name}, {size:.1f} MiB): {variant.get('tool')}"
                         + (f"; tensor types {variant['tensor_types']}" if variant.get("tensor_types") else ""))
    return [*lines, "- `adapter/`: the source run's LoRA adapter (with its manifest.json)",
            "- `SHA256SUMS`: every file's sha256 (`sha256sum -c SHA256SUMS`)"]


def _checks(summary: dict[str, Any]) -> list[str]:
    merge = summary["merge"]
    lines = [f"- Merge: the merged model's log-probabilities equal the unmerged adapter model's within "
             f"{merge['max_logprob_difference']:.2g} (tolerance {merge['atol']:g}) on {merge['prompts_checked']} test "
             f"prompts; merged at {merge['dtype']} on {merge['session']['device']}."]
    for name, variant in summary["variants"].items():
        check = variant.get("template_check")
        if check:
            lines.append(f"- {name}: the GGUF's own chat template and vocabulary give the HF tokenizer's tokens for "
                         f"{check['prompts_matching']} of {check['prompts_checked']} test prompts and "
                         f"{check['answers_matching']} of {check['answers_checked']} answers"
                         + ("" if check["chat_template_in_file"] else " (no chat template in the file)") + ".")
    return lines


def _settings(source: dict[str, Any]) -> list[str]:
    params, settings = source["params"], source["settings"]
    evaluation, model = settings["evaluation"], settings["model"]
    return [f"- Base model: `{model['name']}` (max_length {model['max_length']}, system prompt "
            f"{model['system_prompt']!r}); device {params.get('device')}, precision {params.get('precision')}",
            f"- Task: {settings['data']['task']}; data `{params.get('dataset')}` (family "
            f"{params.get('dataset_family')}); train {params.get('train_size')} records, sha256 "
            f"`{params.get('train_sha256')}`; test {source['test_size_full']} records, sha256 "
            f"`{source['test_sha256']}`",
            f"- LoRA r={params.get('lora_r')} alpha={params.get('lora_alpha')} dropout={params.get('lora_dropout')}; "
            f"learning rate {params.get('learning_rate')}, epochs {params.get('num_train_epochs')}, max steps "
            f"{params.get('max_steps')}, effective batch {params.get('effective_batch_size')}, "
            f"seed {params.get('seed')}",
            f"- Evaluation: label scoring {evaluation['label_scoring']}, generation {evaluation['generation']}, "
            f"max_new_tokens {evaluation['max_new_tokens'] or 'the task budget'}"]


def model_card(summary: dict[str, Any], table: pd.DataFrame) -> str:
    """The Markdown model card: base model, data family and hash, settings, metrics, the table, intended use
    and limits, files and how each was made, and the integrity checks."""
    source, plan = summary["source"], summary["plan"]
    metrics = source["metrics"]
    primary = table["primary_metric"].iloc[0]
    return "\n".join([
        f"# {source['settings']['model']['name']} fine-tune: release of run `{source['run_id']}`", "",
        f"Run: {source['run_name']}. Made by `kedro run --pipeline=release` (finetune-predictor).", "",
        "## Model and data", *_settings(source), "",
        "## Metrics of the source run (its whole test set)",
        f"- {primary}: base model {metrics.get('baseline_primary', float('nan')):.4f}, fine-tuned "
        f"{metrics.get('finetuned_primary', float('nan')):.4f}, classical baseline "
        f"{metrics.get('classical_primary', float('nan')):.4f}", "",
        f"## Variants on the run's own test set ({int(table['n'].iloc[0])} records)", "",
        "Every variant is scored with the run's task, prompt ids and scoring; the adapter row is the source run's "
        "own predictions of the same records. The binomial SE is sqrt(p(1-p)/n) of the adapter's metric (for a "
        "mean of per-record scores in [0, 1] an upper bound). Tokens/s: batch 1, "
        f"{plan.get('threads') or 'all'} llama.cpp threads; memory: resident memory the variant added at its peak.",
        "", markdown_table(table), "", *_verdict(table), "", "![release](release.png)", "",
        "## Files", *_files(summary), "",
        "## Integrity checks", *_checks(summary), "",
        "## Intended use",
        f"The fine-tuned model answers this run's task ({source['settings']['data']['task']}) on inputs like its "
        "training data, prompted with the same chat template and instruction. Run the GGUF files with llama.cpp "
        "(`llama-cli -m <file>`, or `llama_cpp.Llama(model_path=...)`), the merged folder with transformers.", "",
        "## Limits",
        "- Measured on one fixed test set; the binomial SE is the sampling error of that set, not of other data.",
        "- A small model fine-tuned on a few hundred records: not for decisions about people, and not beyond the "
        "task it was trained on. Its answers can be wrong with high confidence.",
        "- The embedded base model's weights come from a Q4_1 GGUF, dequantized; quantizing again compounds that.",
        "- Speed and memory are those of the machine that made the release, beside whatever else ran on it.", ""])
