"""A merged HF folder to GGUF (f16) with llama.cpp's own converter, quantized with llama.cpp, and checked.

Why llama.cpp's ``convert_hf_to_gguf.py`` and not a writer of our own: it is the reference for every
architecture's tensor layout (Llama's rotary permutation of q/k) and every tokenizer's pre-tokenizer, and the
one shipped in the ``llama-cpp-python`` source distribution matches the llama.cpp the bindings were built from,
so the file it writes is the file that runtime reads. The release extra (``make release-extra``) builds the
bindings from that source distribution and unpacks the converter beside the project's cache
(:func:`unpack_converter`); without it the GGUF variants are skipped with the reason, and the merged HF
folder is still released.

q8_0 and q4_k_m are made from the f16 file by ``llama_model_quantize`` (llama.cpp's ``llama-quantize``), in a
child process so its log (which tensors fell back to another type) is kept and a crash stays a reason.
:func:`check_gguf` refuses a truncated or corrupted file with one clear error before llama.cpp opens it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling.models import default_cache_dir, sha256_file

CONVERTER = "convert_hf_to_gguf.py"
# What the converter needs beside it: its per-architecture modules and the gguf-py it was written against.
CONVERTER_PARTS = (CONVERTER, "conversion", "gguf-py")
# Modules the converter imports that the base install may lack: it reads a Llama's vocabulary through
# sentencepiece first (even for a BPE tokenizer, falling back only on a missing file, never a missing module).
CONVERTER_MODULES = {"sentencepiece": "sentencepiece", "yaml": "PyYAML", "tqdm": "tqdm"}  # module: its package
# llama.cpp's file types (llama.h: enum llama_ftype) for the types made by quantizing the f16 file.
QUANTIZE_FTYPES = {"q8_0": 7, "q4_k_m": 15}
GGUF_MAGIC = b"GGUF"


class GGUFIntegrityError(UserFacingError):
    """A GGUF file that is truncated, corrupted or not the one the release wrote."""


def _integrity_error(path: Path, what: str) -> GGUFIntegrityError:
    return GGUFIntegrityError(f"{path} is not a usable GGUF file: {what}", where=str(path),
                              fix="delete the file and run `kedro run --pipeline=release` again (it is rebuilt from "
                                  "the merged model); a copied file: copy it again and compare with SHA256SUMS")


def check_gguf(path: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Read ``path``'s header and tensor table and check that every tensor's data lies inside the file; with
    ``expected_sha256``, also the file's hash. Returns the architecture, tensor count, tensor types and whether
    it carries a chat template. Any problem is one :class:`GGUFIntegrityError` naming the file and the fix."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise _integrity_error(path, "the file does not exist")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise _integrity_error(path, "it does not start with the GGUF magic bytes")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # gguf-py raises ValueError, IndexError or struct errors on a cut header
        raise _integrity_error(path, f"its header or tensor table cannot be read ({type(error).__name__}: "
                                     f"{error})") from error
    end = max((tensor.data_offset + tensor.n_bytes for tensor in reader.tensors), default=0)
    if not reader.tensors or end > size:
        raise _integrity_error(path, f"it is truncated: its tensors end at byte {end}, the file has {size}")
    if expected_sha256 is not None and (actual := sha256_file(path)) != expected_sha256:
        raise _integrity_error(path, f"its sha256 is {actual}, the release wrote {expected_sha256}")
    field = reader.get_field("general.architecture")
    return {"architecture": field.contents() if field is not None else None, "tensors": len(reader.tensors),
            "tensor_types": dict(Counter(tensor.tensor_type.name for tensor in reader.tensors)),
            "chat_template": reader.get_field("tokenizer.chat_template") is not None, "size_bytes": size}


# --- the bindings and the converter ---------------------------------------------------------------------------


def llama_cpp_version() -> str | None:
    """The installed ``llama-cpp-python`` version, or None without the release extra (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def converter_dir(setting: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where the converter is looked for: ``release.converter_dir``, else the cache's copy unpacked from the
    source distribution of the installed bindings (``<cache>/llama.cpp/<version>``)."""
    if setting:
        return Path(setting).expanduser()
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "llama.cpp"
    installed = llama_cpp_version()
    if installed is not None or not root.is_dir():
        return root / str(installed or "not-installed")
    unpacked = sorted(path for path in root.iterdir() if (path / CONVERTER).is_file())
    return unpacked[-1] if unpacked else root / "not-installed"


def missing_converter_modules() -> list[str]:
    """The packages of the converter's Python modules not importable here (found without importing them)."""
    import importlib.util

    return [package for module, package in CONVERTER_MODULES.items() if importlib.util.find_spec(module) is None]


def unpack_converter(sdist: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Unpack ``convert_hf_to_gguf.py`` with its modules and gguf-py from a llama-cpp-python source
    distribution into ``<cache>/llama.cpp/<version>`` (``make release-extra`` calls this); returns the folder."""
    sdist = Path(sdist)
    version = sdist.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
    target = (Path(cache_dir) if cache_dir else default_cache_dir()) / "llama.cpp" / version
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].split("/")[0] in CONVERTER_PARTS and (m.isfile() or m.isdir())]
        if not any(m.name == prefix + CONVERTER for m in members):
            raise FileNotFoundError(f"{sdist} has no {prefix + CONVERTER}")
        for member in members:
            member.name = member.name[len(prefix):]
        target.mkdir(parents=True, exist_ok=True)
        archive.extractall(target, members=members, filter="data")
    return target


def _run_logged(command: list[str], log_path: Path, timeout_s: float) -> tuple[int, str]:
    """Run ``command`` with its output in ``log_path``; the exit status and the log's last lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            status = -1
            log.write(f"\n(stopped after {timeout_s:.0f} s)\n")
    tail = log_path.read_text(errors="replace").splitlines()[-6:]
    return status, " | ".join(line.strip()[:200] for line in tail if line.strip())


def export_f16(merged_dir: str | Path, target: str | Path, converter: Path, log_path: Path,
               timeout_s: float = 3600) -> dict[str, Any]:
    """The merged HF folder as an f16 GGUF at ``target`` (written beside it, renamed when complete). Raises
    ``RuntimeError`` with the converter's last log lines when it fails."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.partial")
    status, tail = _run_logged([sys.executable, str(converter / CONVERTER), str(merged_dir), "--outfile",
                                str(staging), "--outtype", "f16"], log_path, timeout_s)
    if status != 0 or not staging.is_file():
        staging.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp's converter failed (exit {status}): {tail}")
    staging.replace(target)
    return {"tool": f"llama.cpp {CONVERTER} ({converter.name})", "log": str(log_path)}


def quantize(source: str | Path, target: str | Path, variant: str, log_path: Path, threads: int = 0,
             timeout_s: float = 3600) -> dict[str, Any]:
    """``source`` (an f16 GGUF) quantized to ``variant`` at ``target`` by llama.cpp in a child process.
    Returns the tool and the tensors llama.cpp stored in another type than asked (its fallbacks)."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.partial")
    command = [sys.executable, "-m", "finetune_predictor.modeling.gguf_export", "quantize", str(source), str(staging),
               variant, str(threads)]
    status, tail = _run_logged(command, log_path, timeout_s)
    if status != 0 or not staging.is_file():
        staging.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {variant} failed (exit {status}): {tail}")
    staging.replace(target)
    log = log_path.read_text(errors="replace")
    # llama.cpp: "warning: <tensor> - ncols 576 not divisible by 256 (required for type q4_K) -> falling back to q5_0"
    fallbacks = re.findall(r"warning: (\S+)\s+- .*falling back to\s+(\w+)", log)
    total = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", log)
    note = (f"; {total[1]} of {total[2]} tensors fell back to {', '.join(sorted({kind for _, kind in fallbacks}))} "
            "(rows not divisible by the type's block)" if total else "")
    return {"tool": f"llama_cpp.llama_model_quantize (llama-cpp-python {llama_cpp_version()}{note})",
            "fallback_tensors": len(fallbacks), "log": str(log_path)}


def _quantize_here(source: str, target: str, variant: str, threads: int) -> int:
    """The child process of :func:`quantize`: llama.cpp's quantizer, its log on this process's stderr."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZE_FTYPES[variant]
    params.nthread = threads
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))


def main(argv: list[str]) -> int:
    """``python -m finetune_predictor.modeling.gguf_export unpack <sdist>`` or ``quantize <in> <out> <type> <n>``."""
    if argv[:1] == ["unpack"] and len(argv) == 2:
        print(unpack_converter(argv[1]))
        return 0
    if argv[:1] == ["quantize"] and len(argv) == 5:
        return _quantize_here(argv[1], argv[2], argv[3], int(argv[4]))
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
