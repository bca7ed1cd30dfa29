"""Where a run came from: the code (git sha), the machine (CPU, ISA, GPU) and the library versions.

The runs archive keeps finished fine-tunes from every machine in one table, so each row must say what made
it: a score measured with bf16 on AMX is not the score of the same configuration in fp32 on AVX2 (the
bundled candidate study's truth moved by 6 points between two CPUs). Logged once per run as provenance
params (never part of the configuration: they do not change a run's ``replicate_key``).
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

UNKNOWN = "unknown"
# The packages whose versions change a fine-tune's numbers (kernels, trainer, adapter, tokenizer).
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "mlflow", "kedro")
# The CPU's widest matrix/vector extension, widest first (what CPU kernels and bf16 autocast can use).
_ISA_ORDER = (("amx_bf16", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or UNKNOWN


def cpu_isa() -> str:
    """The widest of AMX-bf16, AVX512-bf16, AVX-512 and AVX2 the CPU reports (``baseline`` below AVX2)."""
    flags = set(_cpuinfo().split())
    return next((name for flag, name in _ISA_ORDER if flag in flags), "baseline")


def torch_cpu_capability() -> str:
    """The ISA PyTorch's CPU kernels actually dispatch to (``ATEN_CPU_CAPABILITY`` can cap it below the CPU's)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # an old torch without the query
        return UNKNOWN


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


# What makes a run's numbers: the code and its settings (a changed README, or the runs archive just committed by
# archive_runs, does not make a later run "dirty").
CODE_PATHS = ("src", "conf", "pyproject.toml", "constraints.txt")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout


@lru_cache(maxsize=1)
def git_sha() -> str:
    """The project checkout's commit; ``<sha>+dirty.<hash>`` when the code or settings differ from it (the hash of
    the difference tells two dirty trees apart; untracked files under src/ and conf/ count); ``unknown`` outside
    git. Cached from the first call, made when the tracking package is imported: the code a run started with."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
        diff = _git(root, "diff", "HEAD", "--", *CODE_PATHS)
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    if not diff and not untracked:
        return sha
    return f"{sha}+dirty.{hashlib.sha256((diff + untracked).encode()).hexdigest()[:8]}"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def run_provenance() -> dict[str, str]:
    """Code, machine and library versions of this process, as run-record params."""
    return {
        "git_sha": git_sha(),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "torch_cpu_capability": torch_cpu_capability(),
        "gpu": gpu_name(),
        "python_version": platform.python_version(),
        **{f"{name}_version": package_version(name) for name in VERSIONED_PACKAGES},
    }
