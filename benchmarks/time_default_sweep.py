"""Configurations per hour of the default sweep (conf/base/parameters_sensitivity.yml), for one or more checkouts
run one after the other on the same machine, each on a fresh project copy with its own empty MLflow store:

    git worktree add ../before d2be8e7
    .venv/bin/python benchmarks/time_default_sweep.py before=../before after=. --params "sensitivity.seeds=[42]"
    .venv/bin/python benchmarks/time_default_sweep.py after=. --params "sensitivity.seeds=[42]" --write-docs

Every configuration is trained and evaluated from scratch in each copy (nothing is reused between copies; the
base model's predictions are computed once per sweep where the code reuses them). Do not run anything else on
the machine meanwhile: on 2 cores a second torch process slows both several-fold.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import stamp, write_section
from time_mini_test100 import project_copy


def timed_sweep(project: Path, params: str) -> float:
    """Wall seconds of ``kedro run --pipeline=sensitivity`` in ``project`` (exits with its output if it fails)."""
    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "KEDRO_DISABLE_TELEMETRY": "true",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}  # never a store shared by both copies
    command = [str(kedro), "run", "--pipeline=sensitivity", *(["--params", params] if params else [])]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (project / "sweep.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"the sweep in {project} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return seconds


def trained_runs(project: Path) -> int:
    """Fine-tune runs the sweep finished (child runs with a fine-tuned primary metric)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finetune_predictor"], filter_string="attributes.status = 'FINISHED'",
                              output_format="list")
    return sum(1 for run in runs if "mlflow.parentRunId" in run.data.tags
               and any(name in run.data.metrics for name in ("finetuned_primary", "finetuned_accuracy")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", help="label=path of a checkout, e.g. before=../before after=.")
    parser.add_argument("--params", default="", help="--params for every sweep, e.g. sensitivity.seeds=[42]")
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/performance.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="time-default-sweep-") as folder:
        for spec in args.checkouts:
            label, _, path = spec.partition("=")
            project = project_copy(Path(folder) / label, Path(path).resolve())
            seconds = timed_sweep(project, args.params)
            runs = trained_runs(project)
            rows.append((label, seconds, runs))
            print(f"{label}: {runs} configurations in {seconds:.0f} s", flush=True)
    print(f"\ndefault sweep ({args.params or 'as defined'}), {os.cpu_count()} CPUs")
    per_hour = [3600 * runs / seconds for _, seconds, runs in rows]
    for (label, seconds, runs), rate in zip(rows, per_hour, strict=True):
        print(f"  {label:>8}: {runs} configurations, {seconds:7.1f} s, {rate:5.1f} configurations/hour")
    if len(rows) == 2:
        print(f"  ratio {rows[1][0]}/{rows[0][0]}: {per_hour[1] / per_hour[0]:.2f}x configurations per hour")
    if args.write_docs:
        write_docs(args.params, rows, per_hour)


def write_docs(params: str, rows: list[tuple[str, float, int]], per_hour: list[float]) -> None:
    """The ``time_default_sweep`` section of docs/performance.md: one row per checkout, and their ratio."""
    extra = f" --params {shlex.quote(params)}" if params else ""
    lines = [f"The default sweep (`kedro run --pipeline=sensitivity{extra}`), "
             "each checkout on a fresh project copy with its own store.", "",
             "| checkout | configurations | wall | configurations per hour |", "|---|---|---|---|"]
    lines += [f"| {label} | {runs} | {seconds:.0f} s | {rate:.1f} |"
              for (label, seconds, runs), rate in zip(rows, per_hour, strict=True)]
    if len(rows) == 2:
        ratio = per_hour[1] / per_hour[0]
        lines += ["", f"Ratio {rows[1][0]} / {rows[0][0]}: **{ratio:.2f}x** configurations per hour."]
    command = shlex.join(["python", "benchmarks/time_default_sweep.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", "time_default_sweep", "\n".join(lines) + "\n\n"
                                 + stamp(command)))


if __name__ == "__main__":
    main()
