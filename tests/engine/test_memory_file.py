"""The memory file format: round trip, and a clear refusal for every kind of damage."""

import errno
import hashlib
import json
import os
import struct

import numpy as np
import pytest

from engine.errors import MemoryFileError
from engine.memory.file_format import (
    FORMAT_VERSION,
    MAGIC,
    MemoryFile,
    pack_offsets,
    read_header,
    read_memory,
    unpack_offsets,
    write_memory,
)

HEADER = {"model_fingerprint": "a" * 64, "model_name": "Tiny", "backend": "gguf", "kept_tokens": 3}
REAL_FDOPEN = os.fdopen


def sample(tmp_path, state_bytes=5 << 20):
    path = tmp_path / "m.mem"
    sections = {"offsets": pack_offsets(np.array([0, 5, 9])), "state": os.urandom(state_bytes), "empty": b""}
    return path, sections, write_memory(path, HEADER, sections)


def data_start(path):
    _, _, header_len = struct.unpack_from("<8sIQ", path.read_bytes())
    return 20 + header_len


def craft(path, version, header_bytes, data=b""):
    """A file with a valid checksum, for what the writer itself would never produce."""
    body = struct.pack("<8sIQ", MAGIC, version, len(header_bytes)) + header_bytes + data
    path.write_bytes(body + hashlib.sha256(body).digest())


def test_round_trip(tmp_path):
    path, sections, size = sample(tmp_path)
    assert size == path.stat().st_size
    f = read_memory(path, model_fingerprint="a" * 64, backend="gguf")
    assert isinstance(f, MemoryFile)
    assert f.sections == sections and list(f.sections) == ["offsets", "state", "empty"]
    assert f.header["format_version"] == FORMAT_VERSION and f.header["model_name"] == "Tiny"
    assert [s["name"] for s in f.header["sections"]] == ["offsets", "state", "empty"]
    assert unpack_offsets(f.sections["offsets"]).tolist() == [0, 5, 9]
    assert read_header(path) == f.header
    assert path.read_bytes().startswith(MAGIC)


def test_offsets_are_int64_little_endian():
    offsets = np.array([0, 7, 2**40, 2**62], dtype=np.int64)
    packed = pack_offsets(offsets)
    assert packed == offsets.astype("<i8").tobytes() and len(packed) == 32
    back = unpack_offsets(packed)
    assert back.dtype == np.int64 and back.flags.writeable and back.tolist() == offsets.tolist()


def test_read_header_does_not_read_the_data(tmp_path):
    path, _, _ = sample(tmp_path)
    path.write_bytes(path.read_bytes()[:data_start(path)])
    assert read_header(path)["kept_tokens"] == 3
    with pytest.raises(MemoryFileError, match="truncated"):
        read_memory(path)


@pytest.mark.parametrize("cut", [4, 12, 20, 60, 200, -1000, -33, -1])
def test_truncated(tmp_path, cut):
    path, _, _ = sample(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(MemoryFileError, match=r"m\.mem is truncated: expected (at least )?\d+ bytes, found \d+"):
        read_memory(path)


def test_longer_than_the_header_says(tmp_path):
    path, _, _ = sample(tmp_path)
    with path.open("ab") as f:
        f.write(b"x")
    with pytest.raises(MemoryFileError, match="altered or corrupted"):
        read_memory(path)


@pytest.mark.parametrize("where", ["offsets", "state", "checksum"])
def test_flipped_data_byte_fails_the_checksum(tmp_path, where):
    path, _, _ = sample(tmp_path)
    data = bytearray(path.read_bytes())
    data[{"offsets": data_start(path) + 3, "state": -5000, "checksum": -10}[where]] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MemoryFileError, match=r"m\.mem was altered or corrupted \(checksum mismatch\)"):
        read_memory(path)


def test_any_flipped_header_byte_is_refused(tmp_path):
    path, _, _ = sample(tmp_path, state_bytes=100)
    original = path.read_bytes()
    for i in range(8, data_start(path)):
        data = bytearray(original)
        data[i] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(MemoryFileError, match="truncated|altered or corrupted|format version"):
            read_memory(path)


def test_absurd_header_length_is_refused_without_allocating(tmp_path):
    path, _, _ = sample(tmp_path, state_bytes=100)
    data = bytearray(path.read_bytes())
    data[12:20] = (2**62).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(MemoryFileError, match="truncated"):
        read_header(path)


@pytest.mark.parametrize("header", [b"[1, 2]", b"{not json", b"\xff\xfe", b'{"sections": 3}',
                                    b'{"sections": [{"name": "a", "offset": 5, "length": 0}]}',
                                    b'{"kept_tokens": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                                    b'{"kept_tokens": ' + b"7" * 5_000 + b"}"])
def test_unreadable_header(tmp_path, header):
    path = tmp_path / "odd.mem"
    craft(path, FORMAT_VERSION, header)
    with pytest.raises(MemoryFileError, match=r"odd\.mem has an unreadable header"):
        read_memory(path)


@pytest.mark.parametrize("content", [b"GGUF" + bytes(100), b"", b"hello", b"COMMAMEX" + bytes(100)])
def test_not_a_memory_file(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(MemoryFileError, match=r"model\.gguf is not a Comma memory file"):
        read_memory(path)
    with pytest.raises(MemoryFileError, match="not a Comma memory file"):
        read_header(path)


def test_missing_file(tmp_path):
    for read in (read_memory, read_header):
        with pytest.raises(MemoryFileError, match=r"memory file not found: .*missing\.mem"):
            read(tmp_path / "missing.mem")


def test_other_format_version(tmp_path):
    path = tmp_path / "future.mem"
    craft(path, FORMAT_VERSION + 1, json.dumps({**HEADER, "sections": []}).encode())
    message = (rf"future\.mem was written by format version {FORMAT_VERSION + 1}; "
               rf"this Comma reads version {FORMAT_VERSION}; read the document again \(ingest --force\)")
    for read in (read_memory, read_header):
        with pytest.raises(MemoryFileError, match=message):
            read(path)


def test_other_model_and_backend(tmp_path):
    path, _, _ = sample(tmp_path, state_bytes=100)
    with pytest.raises(MemoryFileError, match=r"m\.mem belongs to another model \(Tiny"):
        read_memory(path, model_fingerprint="b" * 64)
    with pytest.raises(MemoryFileError, match="'gguf' backend, not 'torch'"):
        read_memory(path, backend="torch")


class FailingFile:
    """A temporary file whose second write (or fsync) fails, as a disk that fills up would."""

    def __init__(self, f, error):
        self._f, self._error, self._writes = f, error, 0

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def write(self, data):
        self._writes += 1
        if self._writes > 1:
            raise self._error
        return self._f.write(data)


def fail_writes(monkeypatch, error):
    monkeypatch.setattr("engine.memory.file_format.os.fdopen", lambda fd, mode: FailingFile(REAL_FDOPEN(fd, mode), error))


def fail_fsync(monkeypatch, error):
    def fsync(fd):
        raise error

    monkeypatch.setattr("engine.memory.file_format.os.fsync", fsync)


@pytest.mark.parametrize("fail", [fail_writes, fail_fsync])
def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, fail):
    path, _, _ = sample(tmp_path, state_bytes=1000)
    before = path.read_bytes()
    fail(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(MemoryFileError, match=r"not enough disk space to save the memory \(.*m\.mem\); "
                                              "the previous memory is unchanged"):
        write_memory(path, HEADER, {"state": b"new" * 1000})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.mem"]


def test_other_write_errors_keep_the_previous_file(tmp_path, monkeypatch):
    path, _, _ = sample(tmp_path, state_bytes=1000)
    before = path.read_bytes()
    fail_writes(monkeypatch, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(MemoryFileError, match="could not save the memory to .*Input/output error.*unchanged"):
        write_memory(path, HEADER, {"state": b"new"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.mem"]


def test_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path, _, _ = sample(tmp_path, state_bytes=1000)
    before = path.read_bytes()
    fail_writes(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write_memory(path, HEADER, {"state": b"new"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.mem"]


def test_missing_folder(tmp_path):
    with pytest.raises(MemoryFileError, match="could not save the memory to .*nowhere"):
        write_memory(tmp_path / "nowhere" / "m.mem", HEADER, {"state": b"x"})


def test_sections_may_be_any_contiguous_buffer(tmp_path):
    path = tmp_path / "m.mem"
    offsets = np.array([1, 2, 3], dtype="<i8")
    write_memory(path, HEADER, {"offsets": offsets, "view": memoryview(b"abc")})
    f = read_memory(path)
    assert f.header["sections"][0]["length"] == 24
    assert unpack_offsets(f.sections["offsets"]).tolist() == [1, 2, 3] and f.sections["view"] == b"abc"
