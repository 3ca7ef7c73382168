"""A lossless copy of a GGUF model in a weight type that llama.cpp's CPU matrix path reads fast.

llama.cpp's fast CPU matrix multiplication (its tinyBLAS/sgemm path) covers F32, F16, BF16,
Q8_0 and Q4_0 weights; other types, Q4_1 among them (the bundled model ships so), fall back to
a path that reads a document at about half the speed on this project's machines. Upcasting
those weights to F16 loses nothing (each weight is ``d * q + m`` with ``d`` and ``m`` in f16; the
perplexity of the copy is measured in ``bench/cpu_ceiling.py``), so the bundled model is
converted once, at first use, into the data folder and loaded from there. A person's own model
is converted only when they ask for it (Settings), never silently: for a large model F16 costs
disk, memory and answer speed. A lossy requantisation (Q4_1 → Q4_0, say) is never made.

The copy is written atomically (a temporary file in the same folder, fsync, rename) and
described by a JSON file beside it naming the source's fingerprint, so a later start reuses it
without loading the source, and a changed source (a new package version) gets a new copy.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import temporary_beside, write_bytes
from engine.backends.gguf.model import llama
from engine.errors import ModelError
from engine.models.files import fingerprint
from engine.models.gguf_header import read_model_info

FAST_TYPES = frozenset({
    llama.LLAMA_FTYPE_ALL_F32, llama.LLAMA_FTYPE_MOSTLY_F16, llama.LLAMA_FTYPE_MOSTLY_BF16,
    llama.LLAMA_FTYPE_MOSTLY_Q8_0, llama.LLAMA_FTYPE_MOSTLY_Q4_0,
})
TARGET = llama.LLAMA_FTYPE_MOSTLY_F16
TARGET_NAME = "F16"
# Room kept free beyond the copy, so converting never fills the disk to the last byte.
DISK_MARGIN = 256 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SourceInfo:
    """What the conversion needs to know about a model file, read from its GGUF header."""

    weight_type: int
    weight_type_name: str
    n_params: int

    @property
    def worth_converting(self) -> bool:
        """Known weights off llama.cpp's fast path (an unknown type is left alone)."""
        return self.weight_type >= 0 and self.weight_type not in FAST_TYPES

    @property
    def copy_bytes(self) -> int:
        """About what the F16 copy takes on disk (two bytes a weight, plus a little metadata)."""
        return 2 * self.n_params + (8 << 20)


def inspect(path: Path) -> SourceInfo:
    """The weight type and size of ``path`` from its GGUF header (no tensor is read)."""
    info = read_model_info(path)
    ftype = info.file_type
    name = (llama.llama_ftype_name(ftype) or b"unknown").decode() if ftype >= 0 else "unknown"
    return SourceInfo(ftype, name, info.n_params)


def copy_paths(source: Path, folder: Path, source_fingerprint: str) -> tuple[Path, Path]:
    stem = f"{source.stem}.{source_fingerprint[:16]}.{TARGET_NAME}"
    return folder / f"{stem}.gguf", folder / f"{stem}.json"


def copy_description(copy: Path) -> dict | None:
    """What the JSON beside a copy made here says of it; None when there is no such copy."""
    try:
        facts = json.loads(copy.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or facts.get("weight_type") != TARGET_NAME or \
            not isinstance(facts.get("source_fingerprint"), str) or not isinstance(facts.get("bytes"), int):
        return None
    return facts


def existing_copy(source: Path, folder: Path, source_fingerprint: str) -> Path | None:
    """The copy made earlier from exactly this source, if it is whole."""
    path, _ = copy_paths(source, folder, source_fingerprint)
    facts = copy_description(path)
    if facts is None or facts["source_fingerprint"] != source_fingerprint or _size(path) != facts["bytes"]:
        return None
    return path


def convert(source: Path, folder: Path, source_fingerprint: str, info: SourceInfo,
            progress: Progress | None = None, threads: int | None = None) -> Path:
    """Write the F16 copy of ``source`` into ``folder`` atomically and describe it; returns its path.

    ``progress(done, total)`` is called with bytes written so far (llama.cpp's quantizer has no
    callback of its own, so the growing temporary file is watched from this thread).
    """
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < info.copy_bytes + DISK_MARGIN:
        raise ModelError(
            f"not enough free disk in {folder} for the faster copy of {source.name} "
            f"(needs {(info.copy_bytes + DISK_MARGIN) / 1e6:.0f} MB, {free / 1e6:.0f} MB free)"
        )
    path, description = copy_paths(source, folder, source_fingerprint)
    tmp = temporary_beside(path)
    params = llama.llama_model_quantize_default_params()
    params.ftype = TARGET
    params.allow_requantize = True  # the source is quantised: dequantise it, then store as F16
    params.nthread = threads or os.cpu_count() or 1
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(
        llama.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))))
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            if progress is not None:
                progress(min(_size(tmp), info.copy_bytes - 1), info.copy_bytes)
        if result != [0]:
            raise ModelError(f"llama.cpp could not convert {source.name} (code {result[:1]})")
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
        # The description goes last: a copy without one is never reused.
        write_bytes(description, json.dumps({
            "source": str(source), "source_fingerprint": source_fingerprint,
            "source_weight_type": info.weight_type_name, "weight_type": TARGET_NAME,
            "bytes": size,
        }, indent=2).encode())
    except OSError as exc:
        raise ModelError(f"could not write the faster copy of {source.name} in {folder}: "
                         f"{exc.strerror or exc}") from exc
    finally:
        worker.join()
        tmp.unlink(missing_ok=True)
    if progress is not None:
        progress(info.copy_bytes, info.copy_bytes)
    return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def source_fingerprint_of(path: Path) -> str | None:
    """For a copy made here, the fingerprint of the model it was made from; else None."""
    facts = copy_description(path)
    return facts["source_fingerprint"] if facts is not None else None


def fast_model_path(source: Path, folder: Path, progress: Progress | None = None,
                    notice: Callable[[str], None] | None = None) -> tuple[Path, str | None]:
    """The file to load for ``source`` and, when it is a copy, the fingerprint of ``source``:
    its fast copy (made now when there is none yet), or ``source`` itself when its weights are
    already fast or no copy can be made."""
    source_fingerprint = fingerprint(source)
    found = existing_copy(source, folder, source_fingerprint)
    if found is not None:
        return found, source_fingerprint
    info = inspect(source)
    if not info.worth_converting:
        return source, None
    if notice is not None:
        notice(f"preparing a faster copy of {source.name} for this CPU ({info.weight_type_name} → "
               f"{TARGET_NAME}, {info.copy_bytes / 1e6:.0f} MB, once)")
    try:
        return convert(source, folder, source_fingerprint, info, progress), source_fingerprint
    except ModelError as exc:
        if notice is not None:
            notice(f"{exc}; reading with the original weights, about half as fast")
        return source, None


def remove_copy(path: Path) -> None:
    """Delete a copy made here and its description (only files this module wrote)."""
    if source_fingerprint_of(path) is None:
        raise ModelError(f"{path} is not a copy Comma made; it was left as it is")
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)
