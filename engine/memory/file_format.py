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

A **recall store** (the KV of every passage, written while the document is read) uses a second
layout in this module, with its header at the end, because its sections are written one by one
as the read goes and are too large to hold in memory until the header is known::

    MAGIC "COMMARCL" (8 bytes) | format version (u32)
    | data: the sections' bytes, in the order they were written
    | header: JSON object, UTF-8, sorted keys | header length (u64)
    | SHA-256 (32 bytes) of the header

Its header lists every section with its offset, length and own SHA-256, so a question can load
and verify the few passages it needs without reading the whole store; every byte a question
uses is verified before it is used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.atomic import fsync_folder
from engine.errors import MemoryFileError

FORMAT_VERSION = 1
MAGIC = b"COMMAMEM"
STORE_MAGIC = b"COMMARCL"
_PREAMBLE = struct.Struct("<8sIQ")
_STORE_PREAMBLE = struct.Struct("<8sI")
STORE_PREAMBLE_BYTES = _STORE_PREAMBLE.size
_TRAILER = struct.Struct("<Q")
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


def _write_failed(what: str, path: Path, exc: OSError) -> MemoryFileError:
    if exc.errno in _NO_SPACE:
        hint = "; read with --no-recall to keep only the small memory" if what == "recall store" else ""
        return MemoryFileError(f"not enough disk space to save the {what} ({path}); the previous {what} is "
                               f"unchanged{hint}")
    return MemoryFileError(f"could not save the {what} to {path}: {exc.strerror or exc}; "
                           f"the previous {what} is unchanged")


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
        raise _write_failed("memory", path, exc) from exc
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
        # A crafted header nested 200,000 deep raises RecursionError, and an integer of 5,000
        # digits ValueError (Python's limit on int conversion): both are damage, not bugs.
        except (UnicodeDecodeError, ValueError, RecursionError):
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


class StoreWriter:
    """Writes a recall store section by section into a temporary file beside ``path``.

    ``seal(header)`` completes and syncs the file without making it visible; ``commit()`` then
    renames it into place, so a caller can seal the store, save the memory it belongs to, and
    only then replace the old store. Leaving a ``with`` block without committing removes the
    temporary file, and nothing at ``path`` changes.
    """

    def __init__(self, path: str | os.PathLike, tmp: Path | None = None, resume: dict | None = None):
        """``tmp``: write there instead of a new temporary name (a resumable read keeps its
        store under a name it can find again); ``resume``: what ``checkpoint()`` returned,
        to go on from there in an existing ``tmp`` (anything written after it is cut off)."""
        self.path = Path(path)
        self._sections: list[dict] = []
        self._offset = 0
        self._sealed = False
        self._tmp: Path | None = None
        self._file: typing.BinaryIO | None = None
        try:
            if resume is not None and tmp is not None:
                self._tmp = tmp
                sections = [dict(s) for s in resume["sections"]]
                offset = int(resume["offset"])
                if tmp.stat().st_size < _STORE_PREAMBLE.size + offset:
                    raise MemoryFileError(f"the partial recall store {tmp} is shorter than its checkpoint says")
                self._file = tmp.open("r+b")
                self._file.truncate(_STORE_PREAMBLE.size + offset)
                self._file.seek(0, os.SEEK_END)
                self._sections, self._offset = sections, offset
                return
            if tmp is not None:
                self._tmp = tmp
                self._file = tmp.open("wb")
            else:
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
                self._tmp = Path(name)
                try:
                    self._file = os.fdopen(fd, "wb")
                except OSError:
                    os.close(fd)
                    raise
            self._write(_STORE_PREAMBLE.pack(STORE_MAGIC, FORMAT_VERSION))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            if resume is not None:
                self.detach()
                raise MemoryFileError(f"the partial recall store {tmp} cannot be resumed ({exc})") from exc
            self.discard()
            if not isinstance(exc, OSError):
                raise
            raise _write_failed("recall store", self.path, exc) from exc

    def checkpoint(self) -> dict:
        """Sync what is written so far; returns what ``StoreWriter(path, tmp, resume=...)`` needs."""
        assert self._file is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self.discard()
            raise _write_failed("recall store", self.path, exc) from exc
        return {"sections": [dict(s) for s in self._sections], "offset": self._offset}

    def detach(self) -> None:
        """Close the file but keep it, for a later read to resume (after a cancel)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._tmp = None

    def _write(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        self._file.write(data)

    def add(self, name: str, blob: bytes) -> None:
        """Append one section (a passage's KV, say); its name must be new."""
        try:
            self._write(blob)
        except OSError as exc:
            self.discard()
            raise _write_failed("recall store", self.path, exc) from exc
        self._sections.append({"name": name, "offset": self._offset, "length": len(blob),
                               "sha256": hashlib.sha256(blob).hexdigest()})
        self._offset += len(blob)

    def seal(self, header: dict) -> int:
        """Write the header and checksum and sync the file; returns its size."""
        header_bytes = json.dumps({**header, "format_version": FORMAT_VERSION, "sections": self._sections},
                                  sort_keys=True).encode("utf-8")
        try:
            assert self._file is not None
            self._write(header_bytes)
            self._write(_TRAILER.pack(len(header_bytes)))
            self._write(hashlib.sha256(header_bytes).digest())
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            self.discard()
            raise _write_failed("recall store", self.path, exc) from exc
        self._sealed = True
        return _STORE_PREAMBLE.size + self._offset + len(header_bytes) + _TRAILER.size + _DIGEST

    def commit(self) -> None:
        """Put the sealed store in place of any previous one."""
        if not self._sealed or self._tmp is None:
            raise RuntimeError("seal the recall store before committing it")
        try:
            os.replace(self._tmp, self.path)
            self._tmp = None
        except OSError as exc:
            self.discard()
            raise _write_failed("recall store", self.path, exc) from exc
        try:
            fsync_folder(self.path.parent)
        except OSError as exc:
            raise MemoryFileError(f"the recall store was saved to {self.path}, but its folder could not be synced "
                                  f"to disk ({exc.strerror or exc}); a power cut now could lose it") from exc

    def discard(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


@dataclass(frozen=True)
class StoreFile:
    """An opened recall store: its header, and where each section lies in the file."""

    path: Path
    header: dict
    sections: dict[str, tuple[int, int, str]]  # name -> (file offset, length, sha256)

    def read(self, names: list[str]) -> dict[str, bytes]:
        """The named sections, each checked against its own SHA-256."""
        out = {}
        try:
            with self.path.open("rb") as f:
                for name in names:
                    offset, length, digest = self.sections[name]
                    f.seek(offset)
                    blob = f.read(length)
                    if len(blob) != length or hashlib.sha256(blob).hexdigest() != digest:
                        raise MemoryFileError(f"recall store {self.path} was altered or corrupted (passage {name})")
                    out[name] = blob
        except OSError as exc:
            raise MemoryFileError(f"cannot read recall store {self.path}: {exc.strerror or exc}") from exc
        return out


def open_store(path: str | os.PathLike, *, model_fingerprint: str, backend: str) -> StoreFile:
    """Check a recall store's format, size, header and owner without reading its passages."""
    path = Path(path)
    damaged = f"recall store {path} is damaged (truncated, altered or not a recall store)"
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            preamble = f.read(_STORE_PREAMBLE.size)
            if len(preamble) < _STORE_PREAMBLE.size or size < _STORE_PREAMBLE.size + _TRAILER.size + _DIGEST:
                raise MemoryFileError(damaged)
            magic, version = _STORE_PREAMBLE.unpack(preamble)
            if magic != STORE_MAGIC:
                raise MemoryFileError(damaged)
            if version != FORMAT_VERSION:
                raise MemoryFileError(f"recall store {path} was written by format version {version}; this Comma "
                                      f"reads version {FORMAT_VERSION}")
            f.seek(size - _DIGEST - _TRAILER.size)
            (header_len,) = _TRAILER.unpack(f.read(_TRAILER.size))
            digest = f.read(_DIGEST)
            data_end = size - _DIGEST - _TRAILER.size - header_len
            if header_len <= 0 or data_end < _STORE_PREAMBLE.size:
                raise MemoryFileError(damaged)
            f.seek(data_end)
            header_bytes = f.read(header_len)
            if hashlib.sha256(header_bytes).digest() != digest:
                raise MemoryFileError(damaged)
            header = json.loads(header_bytes)
    except FileNotFoundError:
        raise MemoryFileError(f"recall store not found: {path}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise MemoryFileError(damaged) from None
    except OSError as exc:
        raise MemoryFileError(f"cannot open recall store {path}: {exc.strerror or exc}") from exc
    sections, offset = {}, 0
    try:
        if not isinstance(header, dict):
            raise ValueError
        for s in header["sections"]:
            name, start, length, digest = s["name"], s["offset"], s["length"], s["sha256"]
            if (not isinstance(name, str) or name in sections or type(start) is not int or start != offset
                    or type(length) is not int or length < 0 or not isinstance(digest, str)):
                raise ValueError
            sections[name] = (_STORE_PREAMBLE.size + start, length, digest)
            offset += length
    except (KeyError, TypeError, ValueError):
        raise MemoryFileError(damaged) from None
    if _STORE_PREAMBLE.size + offset != data_end:
        raise MemoryFileError(damaged)
    if header.get("model_fingerprint") != model_fingerprint:
        raise MemoryFileError(f"recall store {path} belongs to another model ({header.get('model_name', 'unknown')})")
    if header.get("backend") != backend:
        raise MemoryFileError(f"recall store {path} was made by the {header.get('backend')!r} backend, not {backend!r}")
    return StoreFile(path, header, sections)
