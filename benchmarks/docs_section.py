"""Measured figures live in docs/, written there by the benchmark that measures them: each benchmark replaces its
own section between ``<!-- <name>:begin -->`` and ``<!-- <name>:end -->`` markers (the rest of the page is prose,
kept as it is). Never copy a figure into a page by hand: re-run its benchmark with ``--write-docs``."""

from __future__ import annotations

import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """This machine in one line: CPU model, cores, the widest ISA (the figures depend on it)."""
    import os

    from finetune_predictor.tracking.provenance import cpu_isa, cpu_model, gpu_name

    gpu = gpu_name()
    return f"{cpu_model()}, {os.cpu_count()} cores, {cpu_isa()}" + (f", GPU {gpu}" if gpu != "none" else "") + (
        f", Python {platform.python_version()}")


def stamp(command: str) -> str:
    """The line under a generated section: the command that wrote it, the commit, the machine and the date."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return (f"*Written by `{command}` at {sha} on {machine()}, {datetime.now(UTC):%Y-%m-%d}; do not edit by "
            "hand.*")


def write_section(page: str | Path, name: str, markdown: str) -> Path:
    """Replace the ``name`` section of ``page`` (relative to the project root) with ``markdown``; a page without
    the markers gets the section appended."""
    path = ROOT / page if not Path(page).is_absolute() else Path(page)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path
