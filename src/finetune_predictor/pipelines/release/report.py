"""What a release reports: the variant table, its plot, the summary, the MLflow names, and the model card."""

from __future__ import annotations

import json
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor.modeling.evaluation import metrics_of
from finetune_predictor.modeling.release import MIB, VARIANTS
from finetune_predictor.pipelines.release.card import model_card
from finetune_predictor.tasks import build_task

# The source run's params the card quotes (its settings and data), when the run logged them.
CARD_PARAMS = ("model_name", "task", "dataset", "dataset_family", "test_dataset", "train_size", "test_size",
               "train_sha256", "test_sha256", "learning_rate", "lora_r", "lora_alpha", "lora_dropout",
               "num_train_epochs", "max_steps", "effective_batch_size", "max_length", "seed", "precision", "device",
               "quantization_actual", "evaluation.label_scoring", "model.system_prompt")
ADAPTER_ROW = "adapter (source run)"

__all__ = ["CARD_PARAMS", "model_card", "plot", "release_table", "run_metrics", "run_params", "run_tags", "summary",
           "to_json"]


def binomial_se(p: float, n: int) -> float:
    """sqrt(p(1-p)/n): exact for an accuracy; for a mean of per-record scores in [0, 1] (token F1, field
    accuracy) an upper bound of the standard error, since such a score's variance is at most p(1-p)."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def _prediction_column(frame: pd.DataFrame) -> str:
    return "scored_prediction" if "scored_prediction" in frame else "generated_prediction"


def _agreement(variant: pd.DataFrame, adapter: pd.DataFrame) -> float:
    """The share of records where the variant predicts what the adapter predicted (paired, by id)."""
    column = _prediction_column(adapter)
    if column not in variant:
        return float("nan")
    mine = variant.set_index(variant["id"].astype(str))[column].astype(str)
    theirs = adapter.set_index(adapter["id"].astype(str))[column].astype(str)
    return float((mine == theirs.reindex(mine.index)).mean())


def _adapter_frame(test: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The source run's fine-tuned predictions of exactly the evaluated records, in their order."""
    by_id = predictions.set_index(predictions["id"].astype(str))
    missing = set(test["id"].astype(str)) - set(by_id.index)
    if missing:
        raise ValueError(f"The source run's predictions lack {len(missing)} test record(s), e.g. {sorted(missing)[:3]}")
    return by_id.loc[test["id"].astype(str)].reset_index(drop=True)


def _perf_columns(result: dict[str, Any]) -> dict[str, Any]:
    perf = result.get("perf", {})

    def rate(tokens: str, seconds: str) -> float:
        return perf[tokens] / perf[seconds] if perf.get(seconds) else float("nan")

    return {"peak_memory_mb": perf.get("peak_memory_mb"), "load_s": perf.get("load_s"),
            "prompt_tokens_per_s": rate("prompt_tokens", "prompt_s"),
            "generation_tokens_per_s": rate("generated_tokens", "generation_s"), "engine": result.get("engine")}


def _template_column(result: dict[str, Any]) -> str | None:
    check = result.get("template_check")
    if not check:
        return "HF tokenizer (same files)" if "perf" in result else None
    return f"{check['prompts_matching']}/{check['prompts_checked']} prompts, " \
           f"{check['answers_matching']}/{check['answers_checked']} answers"


def release_table(source_run: dict[str, Any], test: pd.DataFrame, adapter_predictions: pd.DataFrame,
                  exports: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]],
                  requested: tuple[str, ...]) -> pd.DataFrame:
    """One row for the unmerged adapter (the source run's own predictions of the evaluated records) and one per
    requested variant: file size, peak memory, load time, tokens/s, primary metric, its difference from the
    adapter, the binomial SE of the adapter's metric, the paired agreement with the adapter, and why a
    variant is missing or was not evaluated."""
    settings = source_run["settings"]
    task = build_task(settings["data"], source_run["seen_targets"])
    adapter = _adapter_frame(test, adapter_predictions)
    reference = metrics_of(adapter, task)
    p, n = float(reference["primary"]), len(adapter)
    se = binomial_se(p, n)
    rows = [{"variant": ADAPTER_ROW, "status": "reference", "primary_metric": task.primary_metric, "primary": p,
             "delta_vs_adapter": 0.0, "binomial_se": se, "n": n, "engine": str(reference.get("engine", ""))}]
    for name in (name for name in VARIANTS if name in requested):
        export, result = exports.get(name, {}), results.get(name, {})
        row: dict[str, Any] = {"variant": name, "primary_metric": task.primary_metric, "binomial_se": se, "n": n,
                               "size_mb": export["size_bytes"] / MIB if export.get("produced") else None,
                               "file": export.get("path"), "tool": export.get("tool")}
        if "metrics" in result:
            primary = float(result["metrics"]["primary"])
            variant = pd.DataFrame(result["predictions"])
            row.update(status="evaluated", primary=primary, delta_vs_adapter=primary - p,
                       loss_in_se=(p - primary) / se if se else float("nan"),
                       agreement_with_adapter=_agreement(variant, adapter), tokens_match=_template_column(result),
                       reason=export.get("reason"), **_perf_columns(result))
            row["within_one_se"] = bool(p - primary <= se + 1e-12)
        else:
            row.update(status="evaluation failed" if "error" in result else
                       ("produced, not evaluated" if export.get("produced") else "not produced"),
                       reason=result.get("error") or export.get("reason"))
        rows.append(row)
    columns = ["variant", "status", "size_mb", "peak_memory_mb", "load_s", "prompt_tokens_per_s",
               "generation_tokens_per_s", "primary_metric", "primary", "delta_vs_adapter", "binomial_se", "loss_in_se",
               "within_one_se", "agreement_with_adapter", "tokens_match", "n", "engine", "tool", "file", "reason"]
    return pd.DataFrame(rows).reindex(columns=columns)


def plot(table: pd.DataFrame) -> Figure:
    """Primary metric per variant with the adapter's ±1 binomial SE band, and size and generation tokens/s."""
    rows = table[table["primary"].notna()]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    positions = np.arange(len(rows))
    left.bar(positions, rows["primary"], color=["grey", *["tab:blue"] * (len(rows) - 1)])
    if len(rows):
        reference, se = float(rows["primary"].iloc[0]), float(rows["binomial_se"].iloc[0])
        left.axhspan(reference - se, reference + se, color="tab:orange", alpha=0.2, label="adapter ± 1 binomial SE")
        left.legend(loc="lower right")
        left.set_ylabel(str(rows["primary_metric"].iloc[0]))
    left.bar_label(left.containers[0], fmt="%.3f", fontsize=8)
    left.set_xticks(positions, [str(v).replace(" (source run)", "") for v in rows["variant"]], rotation=20)
    left.set_ylim(0, 1.05)
    left.set_title("primary metric on the run's test set")
    sized = table[table["size_mb"].notna()]
    right.bar(np.arange(len(sized)), sized["size_mb"], color="tab:green")
    right.set_xticks(np.arange(len(sized)), sized["variant"], rotation=20)
    right.set_ylabel("file size (MiB)")
    twin = right.twinx()
    twin.plot(np.arange(len(sized)), sized["generation_tokens_per_s"], "o-", color="tab:red")
    twin.set_ylabel("generation tokens/s (batch 1)", color="tab:red")
    right.set_title("size and generation speed")
    return figure


def summary(source_run: dict[str, Any], plan: dict[str, Any], merged: dict[str, Any],
            exports: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]],
            table: pd.DataFrame) -> dict[str, Any]:
    """Everything the release did and measured with (for release.json, the card and the MLflow run)."""
    variants = {}
    for name, export in exports.items():
        result = results.get(name, {})
        variants[name] = {**{k: v for k, v in export.items() if k != "log"}, "log": export.get("log"),
                          "engine": result.get("engine"), "perf": result.get("perf"),
                          "template_check": result.get("template_check"), "error": result.get("error")}
    return {"source": {k: v for k, v in source_run.items() if k != "seen_targets"}, "plan": plan,
            "merge": merged, "variants": variants, "table": json.loads(table.to_json(orient="records"))}


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"


def run_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``release_<variant>_primary``, ``_size_mb``, ``_tokens_per_s`` (generation, batch 1) and the rest of the
    table's figures, for every variant that has them; ``release_adapter_primary`` and its binomial SE."""
    metrics = {"release_adapter_primary": float(table["primary"].iloc[0]),
               "release_binomial_se": float(table["binomial_se"].iloc[0])}
    names = {"primary": "primary", "size_mb": "size_mb", "generation_tokens_per_s": "tokens_per_s",
             "prompt_tokens_per_s": "prompt_tokens_per_s", "peak_memory_mb": "peak_memory_mb", "load_s": "load_s",
             "delta_vs_adapter": "delta_primary", "agreement_with_adapter": "agreement"}
    for row in table.iloc[1:].to_dict("records"):
        for column, suffix in names.items():
            value = row.get(column)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                metrics[f"release_{row['variant']}_{suffix}"] = float(value)
    return metrics


def run_tags(source_run: dict[str, Any], release_summary: dict[str, Any]) -> dict[str, str]:
    """``release_of`` and ``mlflow.parentRunId`` (the source run: the UI nests the release under it), the run's
    name, and each variant's tool, engine and reason (a fallback, a type that could not be made)."""
    tags = {"release_of": source_run["run_id"], "mlflow.parentRunId": source_run["run_id"],
            "mlflow.runName": f"release | {source_run['run_name']}"[:250],
            "release_folder": str(release_summary["plan"]["folder"])}
    for name, variant in release_summary["variants"].items():
        for key in ("tool", "engine", "reason"):
            if variant.get(key):
                tags[f"release_{name}_{key}"] = str(variant[key])[:5000]
        if variant.get("tensor_types"):
            tags[f"release_{name}_tensor_types"] = json.dumps(variant["tensor_types"], sort_keys=True)
    return tags


def run_params(source_run: dict[str, Any], release_summary: dict[str, Any]) -> dict[str, Any]:
    """What the release ran with: the source run, its task and test set, the merge's precision and device, and
    the llama.cpp build (names apart from the ``release.*`` settings logged at the start)."""
    merge, plan, settings = release_summary["merge"], release_summary["plan"], source_run["settings"]
    return {"source_run_id": source_run["run_id"], "source_task": settings["data"]["task"],
            "source_model_name": settings["model"]["name"], "source_test_sha256": source_run["test_sha256"],
            "source_label_scoring": settings["evaluation"]["label_scoring"],
            "source_targets_from": source_run["targets_from"],
            "evaluated_records": int(release_summary["table"][0]["n"]), "merge_dtype": merge["dtype"],
            "merge_device": merge["session"]["device"], "merge_max_logprob_difference": merge["max_logprob_difference"],
            "merge_adapter_trained_on": merge.get("adapter_trained_on", "none"),
            "llama_cpp_python": plan["llama_cpp_python"] or "not installed", "gguf_converter": plan["converter"],
            "llama_cpp_threads": plan["threads"] or "all cores", "llama_cpp_gpu_layers": plan["gpu_layers"]}
