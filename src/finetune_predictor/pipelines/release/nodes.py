"""Nodes of the release pipeline: find the run, check the disk, merge, export, evaluate, report, log."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from finetune_predictor import tracking
from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling import gguf_export
from finetune_predictor.modeling.artifacts import read_manifest
from finetune_predictor.modeling.hardware import release_accelerator_memory
from finetune_predictor.modeling.memory_estimate import count_params_b
from finetune_predictor.modeling.model_session import compute_plan, open_session
from finetune_predictor.modeling.models import locate_model, sha256_file
from finetune_predictor.modeling.release import (
    GGUF_VARIANTS,
    HF_MERGED,
    MIB,
    check_release_disk,
    folder_size,
    logits_tolerance,
    merge_adapter,
    release_bytes,
    write_checksums,
)
from finetune_predictor.modeling.variant_eval import run_variant
from finetune_predictor.pipelines.release import card as card_text
from finetune_predictor.pipelines.release import report, source
from finetune_predictor.settings_schema import ReleaseSettings

logger = logging.getLogger(__name__)

# A LoRA adapter, the logs and the reports: small beside the weights, counted generously.
OTHER_FILES_BYTES = 64 * MIB


def find_source_run(release: dict[str, Any]) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """The run to release (``release.run_id``, or the latest finished mini_test100 run), the settings it ran
    with (read back from its params), its own fixed test set (by ``test_sha256``; the first
    ``release.max_records``) and its fine-tuned predictions. Nothing is written."""
    settings = ReleaseSettings.from_params(release)
    run = source.find_source_run(settings.run_id, settings.experiment_name)
    full_test, test_path = source.run_test_set(run)
    test = full_test.head(settings.max_records) if settings.max_records else full_test
    seen_targets, targets_from = source.run_training_targets(run, full_test)
    with tempfile.TemporaryDirectory() as scratch:
        predictions = pd.read_json(source.download_artifact(run.info.run_id, source.PREDICTIONS_ARTIFACT, scratch),
                                   orient="records", lines=True, dtype=False)
    params, metrics = run.data.params, run.data.metrics
    info = {"run_id": run.info.run_id, "run_name": run.data.tags.get("mlflow.runName", run.info.run_id),
            "settings": source.run_settings(run), "seen_targets": seen_targets, "targets_from": targets_from,
            "test_path": str(test_path), "test_sha256": params.get("test_sha256"), "test_size_full": len(full_test),
            "params": {key: params[key] for key in report.CARD_PARAMS if key in params},
            "metrics": {key: metrics[key] for key in ("baseline_primary", "finetuned_primary", "classical_primary")
                        if key in metrics}}
    logger.info("Releasing run %s (%s): %d of its %d test records", info["run_id"], info["run_name"], len(test),
                len(full_test))
    return info, test, predictions


def _release_folder(release: dict[str, Any], run_id: str) -> Path:
    return Path(str(release.get("output_dir") or "data/06_models/releases")) / run_id


def plan_release(source_run: dict[str, Any], release: dict[str, Any], model_registry: dict[str, Any]) -> dict[str, Any]:
    """Which variants can be made here and why not the others, and the disk they need, refused before anything
    is written (:class:`~finetune_predictor.modeling.release.ReleaseDiskError`)."""
    settings = ReleaseSettings.from_params(release)
    model = source_run["settings"]["model"]
    location = locate_model(model["name"], model.get("cache_dir"), model_registry)
    plan = compute_plan(model, source_run["settings"]["precision"])
    merged_bytes = 4.0 if "32" in str(plan.load_dtype) else 2.0  # the merge runs at full precision (never 4-bit)
    # Weights in .bin files have no safetensors header to count: the base folder's size stands in (at fp32).
    params_b = count_params_b(location.resolved) or folder_size(location.resolved.path) / 4 / 1e9
    converter = gguf_export.converter_dir(settings.converter_dir, model.get("cache_dir"))
    bindings = gguf_export.llama_cpp_version()
    names = dict.fromkeys([HF_MERGED, *settings.variants])  # hf_merged first: every GGUF is made from it
    variants = {name: _variant_plan(name, converter, bindings) for name in names}
    # Always written (every GGUF is made from it); evaluated and tabled only when asked for.
    variants[HF_MERGED]["requested"] = variants[HF_MERGED]["evaluate"] = HF_MERGED in settings.variants
    made = [name for name, item in variants.items() if item["produce"]]
    if any(name in made for name in GGUF_VARIANTS) and "f16" not in made:
        made.append("f16")  # every quantized file is made from the f16 one (removed after, when not asked for)
    extra = OTHER_FILES_BYTES
    need = release_bytes(params_b * 1e9, merged_bytes, made, extra)
    if settings.log_model_files:  # the MLflow run's copy of every file, where the store is on this disk
        need["mlflow copies"] = sum(need.values()) - extra
    folder = _release_folder(release, source_run["run_id"])
    disk = check_release_disk(folder, need, settings.disk_margin)
    return {"folder": str(folder), "variants": variants, "disk": disk, "params_b": params_b,
            "converter": str(converter), "llama_cpp_python": bindings, "gpu_layers": _gpu_layers(settings, bindings),
            "threads": settings.threads}


def _variant_plan(name: str, converter: Path, bindings: str | None) -> dict[str, Any]:
    """Whether ``name`` can be produced and evaluated here, and the reason where not."""
    if name == HF_MERGED:
        return {"produce": True, "evaluate": True, "reason": None, "requested": True}
    reasons = []
    if not (converter / gguf_export.CONVERTER).is_file():
        reasons.append(f"llama.cpp's {gguf_export.CONVERTER} is not at {converter} (run `make release-extra`, or "
                       "set release.converter_dir to a llama.cpp checkout)")
    elif missing := gguf_export.missing_converter_modules():
        reasons.append(f"llama.cpp's converter at {converter} needs {', '.join(missing)}, not installed here (the "
                       f"release extra: `make release-extra`, or pip install {' '.join(missing)})")
    if bindings is None and name != "f16":
        reasons.append("llama-cpp-python is not installed (the release extra: `make release-extra`), and "
                       "llama_model_quantize makes this type")
    evaluate_reason = None if bindings else "not evaluated: llama-cpp-python is not installed (`make release-extra`)"
    return {"produce": not reasons, "evaluate": not reasons and bindings is not None,
            "reason": "; ".join(reasons) or evaluate_reason, "requested": True}


def _gpu_layers(settings: ReleaseSettings, bindings: str | None) -> int:
    """``release.gpu_layers``, or every layer when the bindings can offload to a GPU, else none."""
    if settings.gpu_layers is not None or bindings is None:
        return int(settings.gpu_layers or 0)
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def merge_model(source_run: dict[str, Any], test: pd.DataFrame, plan: dict[str, Any], release: dict[str, Any],
                model_registry: dict[str, Any]) -> dict[str, Any]:
    """Download the run's adapter into the release folder, merge it into the base through the model session,
    check the merged log-probabilities against the adapter model's on the first test prompts, and write the
    merged HF folder."""
    settings = ReleaseSettings.from_params(release)
    run_settings = source_run["settings"]
    session = open_session(run_settings["model"], model_registry, "evaluate", run_settings["precision"])
    folder = Path(plan["folder"])
    adapter = source.download_artifact(source_run["run_id"], source.ADAPTER_ARTIFACT, folder)
    records = test.head(settings.logit_check_records).to_dict("records")
    prompts = [session.formatter.prompt_ids(str(r["instruction"]), str(r.get("input") or "")) for r in records]
    atol = logits_tolerance(settings.logits_atol, session.plan.precision_name)
    details = {"base_model": run_settings["model"]["name"], "source_run_id": source_run["run_id"]}
    merged = merge_adapter(session, adapter, folder / HF_MERGED, prompts, atol, details)
    release_accelerator_memory()
    trained_on = read_manifest(adapter).get("quantization", "none")
    note = ("the adapter was trained on a 4-bit (QLoRA) base and is merged into the full-precision base weights"
            if trained_on == "4bit" else None)
    return {**merged, "adapter": str(adapter), "session": session.record(), "adapter_trained_on": trained_on,
            "note": note, "tool": "PEFT merge_and_unload + transformers save_pretrained (safetensors)"}


def _file_stem(source_run: dict[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(source_run["settings"]["model"]["name"])).name).strip("-")
    return f"{name}-ft-{source_run['run_id'][:8]}"


def export_variants(source_run: dict[str, Any], merged: dict[str, Any],
                    plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each planned variant's file: the merged folder as is, f16 by llama.cpp's converter, q8_0 and q4_k_m by
    llama.cpp's quantizer from the f16 file. A type that cannot be produced keeps its reason and the others
    go on; every file is checked (:func:`gguf_export.check_gguf`) and hashed."""
    folder, stem = Path(plan["folder"]), _file_stem(source_run)
    exports: dict[str, dict[str, Any]] = {HF_MERGED: {
        "path": merged["folder"], "produced": True, "tool": merged["tool"], "kind": "hf",
        "size_bytes": folder_size(merged["folder"]), "reason": merged.get("note")}}
    f16 = folder / f"{stem}-f16.gguf"
    f16_export: dict[str, Any] | Exception | None = None  # made once, for f16 itself and for the quantized ones
    for name in (name for name in GGUF_VARIANTS if name in plan["variants"]):
        item, target = plan["variants"][name], folder / f"{stem}-{name}.gguf"
        if not item["produce"]:
            exports[name] = {"produced": False, "reason": item["reason"], "kind": "gguf"}
            continue
        try:
            if f16_export is None:
                try:
                    f16_export = gguf_export.export_f16(merged["folder"], f16, Path(plan["converter"]),
                                                        folder / "logs" / "f16.log")
                except (RuntimeError, OSError) as error:
                    f16_export = error
            if isinstance(f16_export, Exception):
                raise RuntimeError(f"the f16 GGUF could not be made: {f16_export}")
            made = f16_export if name == "f16" else gguf_export.quantize(
                f16, target, name, folder / "logs" / f"{name}.log", plan["threads"] or 0)
            checked = gguf_export.check_gguf(target)
        except (RuntimeError, UserFacingError, OSError) as error:
            logger.warning("Variant %s could not be produced: %s", name, error)
            exports[name] = {"produced": False, "reason": f"could not be produced: {error}", "kind": "gguf"}
            continue
        exports[name] = {"path": str(target), "produced": True, "kind": "gguf", "reason": item["reason"], **made,
                         **checked, "sha256": sha256_file(target)}
    if "f16" not in plan["variants"] and f16.is_file():
        f16.unlink()  # made only to quantize from
    return exports


def evaluate_variants(source_run: dict[str, Any], test: pd.DataFrame, exports: dict[str, dict[str, Any]],
                      plan: dict[str, Any], release: dict[str, Any],
                      model_registry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every produced variant evaluated on the run's test set with its task, prompt and scoring (each in a fresh
    process with ``release.isolate``). A variant whose file fails its checks keeps the error as its reason."""
    settings = ReleaseSettings.from_params(release)
    run_settings, results = source_run["settings"], {}
    for name, item in exports.items():
        if not item.get("produced") or not plan["variants"].get(name, {}).get("evaluate"):
            continue
        spec = {"variant": name, "kind": item["kind"], "path": item["path"], "sha256": item.get("sha256"),
                "model": run_settings["model"], "model_registry": model_registry,
                "precision": run_settings["precision"],
                "data": run_settings["data"], "evaluation": run_settings["evaluation"],
                "seen_targets": source_run["seen_targets"], "records": test.to_dict("records"),
                "benchmark_prompts": settings.benchmark_prompts, "benchmark_new_tokens": settings.benchmark_new_tokens,
                "threads": settings.threads, "gpu_layers": plan["gpu_layers"]}
        logger.info("Evaluating %s on %d test records", name, len(test))
        try:
            results[name] = run_variant(spec, settings.isolate)
        except (UserFacingError, RuntimeError, OSError) as error:
            logger.warning("Variant %s could not be evaluated: %s", name, error)
            results[name] = {"variant": name, "error": f"{type(error).__name__}: {error}"}
    return results


def release_table(source_run: dict[str, Any], test: pd.DataFrame, adapter_predictions: pd.DataFrame,
                  exports: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]],
                  release: dict[str, Any]) -> pd.DataFrame:
    """Variant -> file size, peak memory, load time, tokens/s, primary metric, its difference from the unmerged
    adapter (scored from the run's own predictions on the same records) and the binomial SE."""
    requested = ReleaseSettings.from_params(release).variants
    return report.release_table(source_run, test, adapter_predictions, exports, results, requested)


def variant_predictions(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Every variant's prediction table, one block per variant (column ``variant``)."""
    frames = [pd.DataFrame(result["predictions"]).assign(variant=name) for name, result in results.items()
              if "predictions" in result]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["variant", "id"])


def plot_release(table: pd.DataFrame) -> Figure:
    return report.plot(table)


def write_release(source_run: dict[str, Any], plan: dict[str, Any], merged: dict[str, Any],
                  exports: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]],
                  table: pd.DataFrame) -> tuple[str, str, dict[str, Any]]:
    """The release folder's ``README.md`` (the model card), ``release_table.csv``, ``release.png`` and
    ``SHA256SUMS`` over every file in it; returns the card, the checksums and the release summary."""
    folder = Path(plan["folder"])
    table.to_csv(folder / "release_table.csv", index=False)
    # Drawn again here: the catalog's plot is an MLflow artifact, which Kedro can save but not load back.
    report.plot(table).savefig(folder / "release.png", dpi=120)
    summary = report.summary(source_run, plan, merged, exports, results, table)
    card = report.model_card(summary, table)
    (folder / "README.md").write_text(card)
    (folder / "release.json").write_text(report.to_json(summary))
    files = sorted(path.name for path in folder.iterdir()
                   if not path.name.startswith(".") and path.name != "SHA256SUMS")
    checksums = write_checksums(folder, files)
    print(f"\nRelease of run {source_run['run_id']} ({source_run['run_name']}) in {folder.resolve()}:\n"
          f"{card_text.markdown_table(table)}\nModel card: {folder / 'README.md'}; check files: cd {folder} && "
          "sha256sum -c SHA256SUMS")
    return card, checksums, summary


def log_release(source_run: dict[str, Any], plan: dict[str, Any], table: pd.DataFrame, summary: dict[str, Any],
                release: dict[str, Any]) -> dict[str, Any]:
    """Tags of this MLflow run (``release_of`` and ``mlflow.parentRunId`` = the source run, so the UI nests it;
    the tool, engine and fallbacks of each variant) and its metrics ``release_<variant>_*``; with
    ``release.log_model_files`` the model files as artifacts too."""
    run_id = tracking.active_run_id()
    metrics = {key: {"value": value, "step": 0} for key, value in report.run_metrics(table).items()}
    if run_id is None:
        logger.warning("No active MLflow run: the release of %s was not logged", source_run["run_id"])
        return metrics
    tracking.set_tags(run_id, report.run_tags(source_run, summary))
    tracking.log_params(run_id, report.run_params(source_run, summary))
    if ReleaseSettings.from_params(release).log_model_files:
        import mlflow

        mlflow.log_artifacts(plan["folder"], artifact_path="release_files")
    return metrics
