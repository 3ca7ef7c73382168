"""The memory file format: the one place that writes and verifies Comma's memory files.

A memory is what reading a document once leaves on disk, so that questions can be answered
later without reading it again. Both backends store it here: the gguf backend puts llama.cpp
sequence state bytes in a section, the torch backend safetensors bytes (one section per
parallel chunk if it likes). Nothing is pickled: a memory file is data, never code.

Layout (all integers little-endian)::

    MAGIC "COMMAMEM" (8 bytes) | format version (u32) | header length (u64)
    | header: JSON object, UTF-8, sorted keys
    | data: the sections' bytes, one after another, in header order
    | SHA-256 (32 bytes) of everything before it

The header says which model (``model_fingerprint``, ``model_name``), backend, policy and
document made the memory; ``write_memory`` adds ``format_version`` and ``sections``, a list of
``{"name", "offset", "length"}`` with offsets counted from the start of the data, so a reader
knows the exact size the file must have and can tell a truncated file from an altered one.
``pack_offsets``/``unpack_offsets`` encode the section holding the original token offset of
every kept cache slot.

Writes are atomic (temporary file in the same folder, fsync, rename, fsync of the folder), so
a crash or a full disk leaves the previous memory as it was.
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

from engine.atomic import fsync_folder
from engine.errors import MemoryFileError

FORMAT_VERSION = 1
MAGIC = b"COMMAMEM"
_PREAMBLE = struct.Struct("<8sIQ")
_DIGEST = 32
# EDQUOT does not exist on every platform (Windows reports a full disk as ENOSPC only).
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass(frozen=True)
class MemoryFile:
    header: dict
    sections: dict[str, bytes]


def pack_offsets(offsets: np.ndarray) -> bytes:
    """The token offset of every kept slot as int64 little-endian, whatever the host's order."""
    return np.asarray(offsets, dtype="<i8").tobytes()


def unpack_offsets(data: bytes) -> np.ndarray:
    """Inverse of ``pack_offsets``: a writable native int64 array."""
    return np.frombuffer(data, dtype="<i8").astype(np.int64)


def write_memory(path: str | os.PathLike, header: dict, sections: dict[str, bytes]) -> int:
    """Write atomically; returns the file's size. The previous file survives any failure."""
    path = Path(path)
    # A byte view, so that len() counts bytes even for a numpy array or a non-byte memoryview.
    views: dict[str, memoryview] = {name: memoryview(blob).cast("B") for name, blob in sections.items()}
    layout, offset = [], 0
    for name, view in views.items():
        layout.append({"name": name, "offset": offset, "length": len(view)})
        offset += len(view)
    header_bytes = json.dumps({**header, "format_version": FORMAT_VERSION, "sections": layout},
                              sort_keys=True).encode("utf-8")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            # Hash each piece as it is written: a second copy of a multi-hundred-MB state would
            # double the memory that saving needs.
            chunks: list[bytes | memoryview] = [_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes)),
                                                header_bytes, *views.values()]
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise MemoryFileError(f"not enough disk space to save the memory ({path}); "
                                  "the previous memory is unchanged") from exc
        raise MemoryFileError(f"could not save the memory to {path}: {exc.strerror or exc}; "
                              "the previous memory is unchanged") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    try:
        fsync_folder(path.parent)
    except OSError as exc:
        raise MemoryFileError(f"the memory was saved to {path}, but its folder could not be synced to "
                              f"disk ({exc.strerror or exc}); a power cut now could lose it") from exc
    return _PREAMBLE.size + len(header_bytes) + offset + _DIGEST


def _open_checked(path: Path):
    """Open ``path`` and read magic, version and header; returns (file, header, data start)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise MemoryFileError(f"memory file not found: {path}") from None
    except OSError as exc:
        raise MemoryFileError(f"cannot open memory file {path}: {exc.strerror or exc}") from exc
    try:
        size = os.fstat(f.fileno()).st_size
        preamble = f.read(_PREAMBLE.size)
        if len(preamble) < _PREAMBLE.size:
            if preamble and MAGIC.startswith(preamble[:len(MAGIC)]):
                raise MemoryFileError(f"memory file {path} is truncated: expected at least "
                                      f"{_PREAMBLE.size + _DIGEST} bytes, found {size}")
            raise MemoryFileError(f"{path} is not a Comma memory file")
        magic, version, header_len = _PREAMBLE.unpack(preamble)
        if magic != MAGIC:
            raise MemoryFileError(f"{path} is not a Comma memory file")
        if version != FORMAT_VERSION:
            raise MemoryFileError(
                f"memory file {path} was written by format version {version}; this Comma reads version "
                f"{FORMAT_VERSION}; read the document again (ingest --force)"
            )
        # Checked before reading, so that an altered length cannot ask for exabytes of memory.
        if _PREAMBLE.size + header_len > size:
            raise MemoryFileError(f"memory file {path} is truncated: expected at least "
                                  f"{_PREAMBLE.size + header_len} bytes, found {size}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        if not isinstance(header, dict):
            raise MemoryFileError(f"memory file {path} has an unreadable header (altered or corrupted)")
        return f, header, _PREAMBLE.size + header_len
    except BaseException:
        f.close()
        raise


def _section_lengths(path: Path, header: dict) -> dict[str, int]:
    """The sections' lengths, once the layout is known to be the contiguous one the writer makes."""
    lengths, offset = {}, 0
    try:
        for s in header["sections"]:
            name, start, length = s["name"], s["offset"], s["length"]
            if (not isinstance(name, str) or name in lengths or type(start) is not int
                    or type(length) is not int or start != offset or length < 0):
                raise ValueError
            lengths[name] = length
            offset += length
    except (KeyError, TypeError, ValueError):
        raise MemoryFileError(f"memory file {path} has an unreadable header (altered or corrupted)") from None
    return lengths


def read_header(path: str | os.PathLike) -> dict:
    """Magic, version and header only, without reading the data: cheap enough for listings."""
    f, header, _ = _open_checked(Path(path))
    f.close()
    return header


def read_memory(path: str | os.PathLike, *, model_fingerprint: str | None = None,
                backend: str | None = None) -> MemoryFile:
    """Verified load: format, size, checksum, then the model and backend it belongs to."""
    path = Path(path)
    f, header, data_start = _open_checked(path)
    with f:
        lengths = _section_lengths(path, header)
        expected = data_start + sum(lengths.values()) + _DIGEST
        actual = os.fstat(f.fileno()).st_size
        if actual != expected:
            what = "truncated" if actual < expected else "longer than its header says (altered or corrupted)"
            raise MemoryFileError(f"memory file {path} is {what}: expected {expected} bytes, found {actual}")
        f.seek(0)
        digest = hashlib.sha256(f.read(data_start))
        # Sections are read once, hashed as they arrive: no second pass over the data, and the
        # bytes returned are the very bytes that were verified.
        sections = {}
        for name, length in lengths.items():
            blob = f.read(length)
            if len(blob) != length:
                raise MemoryFileError(f"memory file {path} is truncated (it shrank while being read)")
            digest.update(blob)
            sections[name] = blob
        if f.read(_DIGEST) != digest.digest():
            raise MemoryFileError(f"memory file {path} was altered or corrupted (checksum mismatch)")
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
    return MemoryFile(header, sections)
