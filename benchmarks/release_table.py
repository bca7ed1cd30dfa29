"""The release pipeline's table for finished runs: each variant's size, peak memory, load time, tokens/s and
primary metric beside the unmerged adapter's, with the binomial SE, and the issue's target checked (no variant down
to ``q8_0`` loses more than one SE; ``q4_k_m`` states its loss).

    .venv/bin/python benchmarks/release_table.py --run-id <id> [--run-id <id> ...]   # runs the release of each
    .venv/bin/python benchmarks/release_table.py --run-id <id> --existing          # reads a release already made
    .venv/bin/python benchmarks/release_table.py --run-id <id> --write-docs        # and rewrites docs/performance.md

Each release is `kedro run --pipeline=release --params release.run_id=<id>` in this project (its store, and
``release.output_dir`` as ``--releases`` says); the figures are the pipeline's own ``release_table.csv``. Speed
and memory depend on the machine and on what else runs on it: run nothing else meanwhile (on 2 cores a second
torch process slows both).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from docs_section import ROOT, stamp, write_section

RELEASES = ROOT / "data" / "06_models" / "releases"  # conf/base/parameters_release.yml's release.output_dir
WITHIN_ONE_SE = ("hf_merged", "f16", "q8_0")  # the target: none of these loses more than one binomial SE


def run_release(run_id: str) -> float:
    """`kedro run --pipeline=release` of ``run_id``; its wall time in seconds."""
    kedro = str(Path(sys.executable).with_name("kedro"))
    start = time.perf_counter()
    subprocess.run([kedro, "run", "--pipeline=release", "--params", f"release.run_id={run_id}"], cwd=ROOT, check=True)
    return time.perf_counter() - start


def read_release(run_id: str, releases: Path = RELEASES) -> tuple[pd.DataFrame, dict]:
    folder = releases / run_id
    return pd.read_csv(folder / "release_table.csv"), json.loads((folder / "release.json").read_text())


def _cell(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{round(float(value), digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"


def verdict(table: pd.DataFrame) -> str:
    """The target in one line: every variant down to q8_0 within one SE, and q4_k_m's loss."""
    rows = table.set_index("variant")
    evaluated = rows[rows["status"] == "evaluated"]
    checked = [name for name in WITHIN_ONE_SE if name in evaluated.index]
    worst = max(checked, key=lambda name: evaluated.loc[name, "loss_in_se"]) if checked else None
    parts = []
    if worst is not None:
        met = all(bool(evaluated.loc[name, "within_one_se"]) for name in checked)
        parts.append(f"down to q8_0 the largest loss is {worst}'s {evaluated.loc[worst, 'loss_in_se']:+.2f} SE "
                     f"(target ≤ 1 SE: {'met' if met else 'not met'})")
    if "q4_k_m" in evaluated.index:
        q4 = evaluated.loc["q4_k_m"]
        loss, in_se = round(-q4["delta_vs_adapter"], 4) + 0.0, round(q4["loss_in_se"], 2) + 0.0
        parts.append(f"q4_k_m's loss: {loss:+.4f} ({in_se:+.2f} SE; negative is a gain)")
    missing = rows[rows["status"] == "not produced"]
    parts += [f"{name} not produced: {row['reason']}" for name, row in missing.iterrows()]
    return "; ".join(parts) + "."


def markdown(table: pd.DataFrame, summary: dict, seconds: float | None) -> str:
    source = summary["source"]
    params = source["params"]
    lines = [f"**{params['task']}**, run `{source['run_id']}` ({source['run_name']}); test set "
             f"{params['test_size']} records, sha256 `{params['test_sha256'][:12]}…`, trained at "
             f"{params['precision']}" + (f"; release wall time {seconds:.0f} s" if seconds else "") + ".", "",
             "| variant | size MiB | peak MiB | load s | prompt tok/s | gen tok/s | "
             f"{table['primary_metric'].iloc[0]} | Δ vs adapter | SE | Δ in SE | agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        lines.append(f"| {row['variant']} | {_cell(row['size_mb'], 1)} | {_cell(row['peak_memory_mb'], 0)} | "
                     f"{_cell(row['load_s'], 2)} | {_cell(row['prompt_tokens_per_s'], 0)} | "
                     f"{_cell(row['generation_tokens_per_s'], 1)} | {_cell(row['primary'], 4)} | "
                     f"{_cell(row['delta_vs_adapter'], 4)} | {_cell(row['binomial_se'], 4)} | "
                     f"{_cell(-row['loss_in_se'] if row['loss_in_se'] == row['loss_in_se'] else None, 2)} | "
                     f"{_cell(row['agreement_with_adapter'], 2)} |")
    return "\n".join([*lines, "", verdict(table)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", action="append", required=True, help="a FINISHED run of this project's store")
    parser.add_argument("--existing", action="store_true", help="read the releases already made; run nothing")
    parser.add_argument("--releases", type=Path, default=RELEASES,
                        help="release.output_dir, where it is not the default (default: %(default)s)")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the release section of docs/performance.md")
    args = parser.parse_args()
    sections = []
    for run_id in args.run_id:
        seconds = None if args.existing else run_release(run_id)
        table, summary = read_release(run_id, args.releases)
        section = markdown(table, summary, seconds)
        print(section, "\n")
        sections.append(section)
    if args.write_docs:
        command = "python benchmarks/release_table.py " + " ".join(f"--run-id {r}" for r in args.run_id) + (
            " --existing" if args.existing else "") + " --write-docs"
        print("wrote", write_section("docs/performance.md", "release_table", "\n\n".join(sections) + "\n\n"
                                     + stamp(command)))


if __name__ == "__main__":
    main()
