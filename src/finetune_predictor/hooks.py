"""Hooks: at the end of a run, say where its outputs are and what to try next."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl


def _saved_path(dataset: Any) -> Path | None:
    """The path a (possibly versioned, possibly MLflow-wrapped) file dataset saved to in this run."""
    version = getattr(dataset, "_version", None)
    if version is not None and version.save and hasattr(dataset, "_get_versioned_path"):
        # _get_save_path() refuses a path that exists, which it does once the run has saved there.
        return Path(str(dataset._get_versioned_path(version.save))).resolve()
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)).resolve() if filepath is not None else None


class RunSummaryHooks:
    """Prints the absolute paths of the run's adapter, predictions, metrics and plots, and next commands."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], run_result: dict[str, Any], pipeline: Any,
                           catalog: Any) -> None:
        lines = []
        for name in sorted(pipeline.all_outputs()):
            try:
                dataset = catalog.get(name)
            except Exception:
                continue
            summary = (getattr(dataset, "metadata", None) or {}).get("summary")
            path = _saved_path(dataset) if summary else None
            if path is not None and path.exists():
                lines.append(f"  {summary + ':':<28} {path}")
        if not lines:
            return
        project = Path.cwd()
        print("\nfinetune-predictor: run finished. Outputs:")
        print("\n".join(lines))
        print("Next:")
        print(f"  compare runs in the MLflow UI:  cd {project} && .venv/bin/mlflow ui "
              "--backend-store-uri sqlite:///mlflow.db   (then open http://127.0.0.1:5000)")
        print('  run on your own data:           kedro run --pipeline=mini_test100 --params '
              '"data.path=my.jsonl,data.label_positive=fake,data.label_negative=legitimate"')
        print("  inspect the pipelines:          kedro viz  (pip install -e '.[viz]')\n")
