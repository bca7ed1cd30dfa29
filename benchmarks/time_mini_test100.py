"""Wall time of `kedro run --pipeline=mini_test100`, first run and second run (the base model's predictions
reused), in one process tree, on a fresh copy of the project with its own MLflow store.

    .venv/bin/python benchmarks/time_mini_test100.py                    # fp32, as on CPUs without bf16
    .venv/bin/python benchmarks/time_mini_test100.py --precision auto   # what this CPU would choose
    .venv/bin/python benchmarks/time_mini_test100.py --cap-isa avx2     # as on a CPU without AVX-512
    .venv/bin/python benchmarks/time_mini_test100.py --write-docs       # and rewrite its section of docs/performance.md

``--cap-isa avx2`` caps PyTorch's own kernels, oneDNN and MKL at AVX2 (``ATEN_CPU_CAPABILITY``,
``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``): an AVX-512 machine then runs the code paths of an
AVX2-only CPU of the same clock and cache, which is what the laptops and CI runners without AVX-512 have.

The second run must report every metric the first does (nothing dropped to save time) and must log
``baseline_reused=true`` with the first run as its source. Do not run anything else on the machine meanwhile:
on 2 cores a second torch process slows both several-fold.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import stamp, write_section

ROOT = Path(__file__).resolve().parents[1]


def project_copy(target: Path, source: Path = ROOT) -> Path:
    """conf/ (without conf/local), src/, pyproject.toml and .telemetry of ``source`` (this checkout, or a worktree
    of an older commit): a clean project with an empty store."""
    shutil.copytree(source / "conf", target / "conf", ignore=shutil.ignore_patterns("local"))
    (target / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    shutil.copytree(source / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def timed_run(project: Path, params: str) -> float:
    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    started = time.perf_counter()
    result = subprocess.run([str(kedro), "run", "--pipeline=mini_test100", "--params", params], cwd=project,
                            env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"mini_test100 failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp32", help="training.precision for both runs (default fp32)")
    parser.add_argument("--params", default="", help="more --params for both runs, comma-separated")
    parser.add_argument("--cap-isa", choices=["avx2"], help="cap the CPU kernels at this instruction set")
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite this variant's section of docs/performance.md")
    args = parser.parse_args()
    if args.cap_isa == "avx2":  # inherited by both kedro runs
        os.environ.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    params = ",".join(p for p in (f"training.precision={args.precision}", args.params) if p)
    import mlflow

    with tempfile.TemporaryDirectory(prefix="time-mini-test100-") as folder:
        project = project_copy(Path(folder) / "project")
        first, second = timed_run(project, params), timed_run(project, params)
        mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
        runs = sorted(mlflow.search_runs(experiment_names=["finetune_predictor"], output_format="list"),
                      key=lambda run: run.info.start_time)
    before, after = runs[-2], runs[-1]
    dropped = sorted(set(before.data.metrics) - set(after.data.metrics))
    print(f"mini_test100, training.precision={args.precision}, {os.cpu_count()} CPUs, "
          f"CPU kernels capped at: {os.environ.get('ATEN_CPU_CAPABILITY', 'none')}")
    print(f"  first run:  {first:7.1f} s   (baseline_reused={before.data.params.get('baseline_reused')})")
    print(f"  second run: {second:7.1f} s   (baseline_reused={after.data.params.get('baseline_reused')}, source "
          f"{after.data.params.get('baseline_source_run_id', '')[:8]} = first run {before.info.run_id[:8]})")
    print(f"  saved: {first - second:.1f} s ({100 * (1 - second / first):.0f} %); metrics first/second: "
          f"{len(before.data.metrics)}/{len(after.data.metrics)}, dropped: {dropped or 'none'}")
    if args.write_docs:
        write_docs(args, (first, second), (before, after), dropped)


def write_docs(args: argparse.Namespace, seconds: tuple[float, float], runs: tuple, dropped: list[str]) -> None:
    """This variant's section of docs/performance.md: time_mini_test100[_<precision>][_<isa>]."""
    (first, second), (before, after) = seconds, runs
    params = f", `--params {args.params}`" if args.params else ""
    markdown = "\n".join([
        f"`mini_test100`, `training.precision={args.precision}`{params}, CPU kernels capped at: "
        f"{args.cap_isa or 'none'}. Wall time of the whole `kedro run`, on a fresh project copy.", "",
        "| run | wall | baseline reused |", "|---|---|---|",
        f"| first | {first:.1f} s | {before.data.params.get('baseline_reused')} |",
        f"| second | {second:.1f} s ({100 * (second / first - 1):+.0f} %) | "
        f"{after.data.params.get('baseline_reused')} |", "",
        f"Metrics first / second run: {len(before.data.metrics)} / {len(after.data.metrics)}, dropped: "
        f"{', '.join(dropped) or 'none'}."])
    section = ("time_mini_test100" + ("" if args.precision == "fp32" else f"_{args.precision}")
               + (f"_{args.cap_isa}" if args.cap_isa else ""))
    command = shlex.join(["python", "benchmarks/time_mini_test100.py", *sys.argv[1:]])
    print("wrote", write_section("docs/performance.md", section, markdown + "\n\n" + stamp(command)))


if __name__ == "__main__":
    main()
