"""Artifacts written so that a kill never leaves half of one, and an adapter's files checked when it is loaded.

A run can be killed at any moment (SIGKILL, a node lost, a full disk). Whatever this project writes is
therefore built under a temporary name beside its destination and renamed into place once complete: a
reader sees the old artifact or the new one, never a half-written one, and a leftover ``.<name>.partial-*``
(a dot file, skipped by Kedro's version lookup and by the model hash) is the only trace of a killed write.

- :func:`atomic_directory` for folders (the adapter, the converted model),
- :func:`atomic_write_bytes` / :func:`atomic_write_text` for single files (caches),
- :class:`AtomicSaveMixin` for the catalog's file datasets (reports, tables, plots, the predictor card):
  ``finetune_predictor.datasets.Atomic*Dataset``.

An adapter folder carries ``manifest.json``, the sha256 of each file as training saved it
(:func:`write_manifest`); :func:`verify_manifest` checks them before the adapter is loaded for evaluation, so a
truncated, corrupted or missing file is one clear error instead of metrics of some other model.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from finetune_predictor.errors import UserFacingError
from finetune_predictor.modeling.models import sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class ArtifactIntegrityError(UserFacingError):
    """An artifact whose files are missing or differ from the sha256 recorded when it was saved."""


def _sibling(final: Path, kind: str) -> Path:
    """A hidden name beside ``final`` on the same file system (a rename across file systems is a copy)."""
    return final.parent / f".{final.stem}.{kind}-{uuid.uuid4().hex[:12]}{final.suffix}"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def replace_path(staging: Path, final: Path) -> None:
    """Move a complete file or folder ``staging`` to ``final``. A file replaces the old one in one rename. A
    folder over an existing folder: the old one is renamed aside, the new one into place, then the old one is
    removed; a kill between the two renames leaves no folder at ``final`` (and the old one beside it), never a
    mixture of the two."""
    staging, final = Path(staging), Path(final)
    if staging.is_dir() and final.exists():
        old = _sibling(final, "old")
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """A fresh folder to fill; renamed to ``final`` when the block ends without error (its files synced to
    disk first), removed when it raises."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(final, "partial")
    staging.mkdir()
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync(file)
        replace_path(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never a part of ``data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(path, "partial")
    try:
        with open(staging, "xb") as handle:  # "x": the umask's permissions, as a plain write would give
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` for text."""
    atomic_write_bytes(path, text.encode(encoding))


# --- the catalog's file datasets ----------------------------------------------------------------------------


class AtomicSaveMixin:
    """Put before a Kedro file dataset class (``class AtomicTextDataset(AtomicSaveMixin, TextDataset)``): its
    ``save`` writes to a hidden sibling of the save path, which is renamed into place when complete.

    Every kedro-datasets file dataset asks ``_get_save_path()`` once for where to write; during a save it
    answers the sibling. Kedro finds versions by the file's own name (``<name>/<version>/<name>``), so a
    sibling left by a killed save is never loaded. Object stores (s3, gcs) replace an object whole, so only
    local files take the detour."""

    _atomic_target: PurePosixPath | None = None

    def save(self, data: Any) -> None:
        bound = super().save  # type: ignore[misc]
        # Kedro wraps each save in a version check; the one around this save runs it once, after the rename.
        original = getattr(bound, "__wrapped__", None)
        inner = functools.partial(original, self) if original is not None else bound
        if getattr(self, "_protocol", "file") != "file":
            inner(data)
            return
        final = Path(str(super()._get_save_path()))  # type: ignore[misc]
        staging = _sibling(final, "partial")
        self._atomic_target = PurePosixPath(staging.as_posix())
        try:
            inner(data)
            if staging.is_file():
                _fsync(staging)
            replace_path(staging, final)
        finally:
            self._atomic_target = None
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)

    def _get_save_path(self) -> PurePosixPath:
        if self._atomic_target is not None:
            return self._atomic_target
        return super()._get_save_path()  # type: ignore[misc, no-any-return]


# --- manifests: the sha256 of each file, written at save, checked at load -------------------------------------


def folder_checksums(folder: Path) -> dict[str, str]:
    """sha256 of each plain file of ``folder`` (not the manifest, not hidden files)."""
    return {path.name: sha256_file(path) for path in sorted(Path(folder).iterdir())
            if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith(".")}


def write_manifest(folder: str | Path, checksums: Mapping[str, str], **details: Any) -> dict[str, Any]:
    """``manifest.json`` in ``folder``: ``checksums`` (file name -> sha256, as recorded when the files were
    saved) and ``details`` (what the artifact was made with, e.g. the base model and quantization)."""
    manifest = {"format": MANIFEST_FORMAT, "sha256": dict(sorted(checksums.items())), **details}
    atomic_write_text(Path(folder) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _integrity_error(what: str, where: Path, fix: str) -> ArtifactIntegrityError:
    return ArtifactIntegrityError(what, where=str(where), fix=fix)


def read_manifest(folder: str | Path, kind: str = "adapter", fix: str = "") -> dict[str, Any]:
    """The manifest of ``folder``, or one clear error when the folder or its manifest is missing or unreadable."""
    named, folder = str(folder), Path(folder)
    fix = fix or f"point to the {kind} folder a finished run saved, or re-run the run that saves it"
    if not named.strip() or named == "." or not folder.is_dir():  # "" would be the working directory
        raise ArtifactIntegrityError(f"No {kind} folder at {named!r}", where=named or "(an empty path)", fix=fix)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise _integrity_error(f"The {kind} folder {folder} has no {MANIFEST_NAME} (the sha256 of its files, "
                               "written when it is saved): it was not saved completely by this project", path, fix)
    try:
        manifest = json.loads(path.read_text())
        checksums = dict(manifest["sha256"])
    except (ValueError, KeyError, TypeError) as error:
        raise _integrity_error(f"The {kind} manifest {path} is unreadable ({error})", path, fix) from None
    if not checksums:
        raise _integrity_error(f"The {kind} manifest {path} lists no files", path, fix)
    return manifest


def verify_manifest(folder: str | Path, kind: str = "adapter", fix: str = "",
                    shown_as: str | Path | None = None) -> dict[str, Any]:
    """Check every file the manifest of ``folder`` names against the sha256 recorded at save; return the
    manifest. A missing file or a different hash is an :class:`ArtifactIntegrityError` naming the file, the
    expected and the actual sha256, and the fix. ``shown_as``: the folder the message names (a staging
    folder's destination)."""
    folder = Path(folder)
    manifest = read_manifest(folder, kind, fix)
    fix = fix or f"re-run the run that saved this {kind}, or restore the folder from its MLflow artifact"
    for name, expected in manifest["sha256"].items():
        path = folder / name
        shown = Path(shown_as) / name if shown_as is not None else path
        if not path.is_file():
            raise _integrity_error(f"The {kind} file {shown} is missing (expected sha256 {expected})", shown, fix)
        actual = sha256_file(path)
        if actual != expected:
            raise _integrity_error(f"The {kind} file {shown} is not the file that was saved: expected sha256 "
                                   f"{expected}, actual {actual}", shown, fix)
    return manifest


# --- outputs written before a dataset became versioned ------------------------------------------------------


def version_from_mtime(path: Path) -> str:
    """A Kedro version string (``YYYY-MM-DDThh.mm.ss.sssZ``) for the time ``path`` was last written."""
    from datetime import UTC, datetime

    from kedro.io.core import VERSION_FORMAT

    stamp = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).strftime(VERSION_FORMAT)
    return stamp[:-4] + stamp[-1:]  # milliseconds, as kedro.io.core.generate_timestamp writes them


def adopt_unversioned_file(filepath: str | Path) -> Path | None:
    """Move a plain file written at a versioned dataset's path (by a project from before that dataset was
    versioned) into Kedro's versioned layout, ``<filepath>/<version>/<name>``, dated by its modification time;
    Kedro would otherwise refuse to load or save there (``NotADirectoryError``). Returns the new path, or None
    when there was nothing to move. The file is renamed, never rewritten or removed: nothing computed is lost,
    and a process that moves it at the same moment makes the other's attempt a no-op."""
    filepath = Path(filepath)
    if not filepath.is_file():
        return None
    staging = _sibling(filepath, "unversioned")
    try:
        version = version_from_mtime(filepath)
        os.replace(filepath, staging)
    except FileNotFoundError:  # another process adopted it first
        return None
    if not staging.is_file():  # another process had already made filepath its folder of versions: put it back
        os.replace(staging, filepath)
        return None
    target = filepath / version / filepath.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file was written at filepath again in between: the old one keeps a visible name
        kept = filepath.with_name(f"{filepath.name}.unversioned-{version}")
        os.replace(staging, kept)
        fix = f"move {kept.name} into {filepath.name}/<version>/ by hand, or delete it"
        raise UserFacingError(f"{filepath} was rewritten while its older output was being moved into versions",
                              str(kept), fix) from None
    os.replace(staging, target)
    return target
