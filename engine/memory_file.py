"""The memory file format: the one place that writes and verifies Comma's memory files.

Layout (all integers little-endian)::

    MAGIC "COMMAMEM" (8 bytes) | format version (u32) | header length (u64)
    | header: JSON, UTF-8, sorted keys | sections, one after another | SHA-256 of all the above

The header says which model (fingerprint), backend, policy and document made the memory, and
lists the sections as ``{"name", "offset", "length"}`` with offsets counted from the first
section byte, so a reader knows the exact size the file must have. Sections are opaque bytes:
llama.cpp sequence state for the gguf backend, safetensors bytes for the torch backend, and
numpy arrays such as the original token offset of every kept slot. Nothing is pickled.

Writes are atomic (temporary file in the same folder, fsync, rename, fsync of the folder), so a
crash or a full disk leaves the previous memory as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import MemoryFileError

FORMAT_VERSION = 1
MAGIC = b"COMMAMEM"
_PREAMBLE = struct.Struct("<8sIQ")
_DIGEST = 32
_BLOCK = 1 << 20


@dataclass(frozen=True)
class MemoryFile:
    header: dict
    sections: dict[str, bytes]


def pack_offsets(offsets: np.ndarray) -> bytes:
    return np.asarray(offsets, dtype="<i8").tobytes()


def unpack_offsets(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i8").astype(np.int64)


def write_memory(path: str | os.PathLike, header: dict, sections: dict[str, bytes]) -> int:
    """Write atomically; returns the file's size. The previous file survives any failure."""
    path = Path(path)
    layout, offset = [], 0
    for name, blob in sections.items():
        layout.append({"name": name, "offset": offset, "length": len(blob)})
        offset += len(blob)
    header_bytes = json.dumps({**header, "format_version": FORMAT_VERSION, "sections": layout},
                              sort_keys=True).encode("utf-8")
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in (_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes)), header_bytes,
                          *sections.values()):
                digest.update(chunk)
                f.write(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MemoryFileError(f"not enough disk space to save the memory ({path}); "
                                  "the previous memory is unchanged") from exc
        raise MemoryFileError(f"could not save the memory to {path}: {exc.strerror or exc}; "
                              "the previous memory is unchanged") from exc
    return _PREAMBLE.size + len(header_bytes) + offset + _DIGEST


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_checked(path: Path):
    """Open ``path`` and read magic, version and header; returns (file, header, data start)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise MemoryFileError(f"memory file not found: {path}") from None
    except OSError as exc:
        raise MemoryFileError(f"cannot open memory file {path}: {exc.strerror or exc}") from exc
    try:
        preamble = f.read(_PREAMBLE.size)
        if len(preamble) < _PREAMBLE.size:
            if MAGIC.startswith(preamble[:8]) and preamble:
                raise MemoryFileError(f"memory file {path} is truncated ({len(preamble)} bytes)")
            raise MemoryFileError(f"{path} is not a Comma memory file")
        magic, version, header_len = _PREAMBLE.unpack(preamble)
        if magic != MAGIC:
            raise MemoryFileError(f"{path} is not a Comma memory file")
        if version != FORMAT_VERSION:
            raise MemoryFileError(
                f"memory file {path} was written by format version {version}; this Comma reads version "
                f"{FORMAT_VERSION}; read the document again (ingest --force)"
            )
        raw = f.read(header_len)
        if len(raw) < header_len:
            raise MemoryFileError(f"memory file {path} is truncated (its header is cut off)")
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MemoryFileError(f"memory file {path} has an unreadable header (altered or corrupted)") from None
        return f, header, _PREAMBLE.size + header_len
    except BaseException:
        f.close()
        raise


def read_header(path: str | os.PathLike) -> dict:
    f, header, _ = _open_checked(Path(path))
    f.close()
    return header


def read_memory(path: str | os.PathLike, *, model_fingerprint: str | None = None,
                backend: str | None = None) -> MemoryFile:
    """Verified load: format, size, checksum, then the model and backend it belongs to."""
    path = Path(path)
    f, header, data_start = _open_checked(path)
    with f:
        try:
            layout = header["sections"]
            data_len = sum(int(s["length"]) for s in layout)
        except (KeyError, TypeError, ValueError):
            raise MemoryFileError(f"memory file {path} has an unreadable header (altered or corrupted)") from None
        expected = data_start + data_len + _DIGEST
        actual = os.fstat(f.fileno()).st_size
        if actual != expected:
            what = "truncated" if actual < expected else "longer than its header says (altered or corrupted)"
            raise MemoryFileError(f"memory file {path} is {what}: expected {expected} bytes, found {actual}")
        f.seek(0)
        digest = hashlib.sha256()
        remaining = expected - _DIGEST
        while remaining:
            block = f.read(min(_BLOCK, remaining))
            digest.update(block)
            remaining -= len(block)
        if f.read(_DIGEST) != digest.digest():
            raise MemoryFileError(f"memory file {path} was altered or corrupted (checksum mismatch)")
        f.seek(data_start)
        data = f.read(data_len)
    if model_fingerprint is not None and header.get("model_fingerprint") != model_fingerprint:
        raise MemoryFileError(
            f"memory file {path} belongs to another model ({header.get('model_name', 'unknown')}, fingerprint "
            f"{str(header.get('model_fingerprint'))[:12]}); read the document again with this model"
        )
    if backend is not None and header.get("backend") != backend:
        raise MemoryFileError(
            f"memory file {path} was made by the {header.get('backend')!r} backend, not {backend!r}; "
            "read the document again with this backend"
        )
    view = memoryview(data)
    sections = {s["name"]: bytes(view[s["offset"]:s["offset"] + s["length"]]) for s in layout}
    return MemoryFile(header, sections)
