"""The memory file format: round trip, and a clear refusal for every kind of damage."""

import errno
import json
import os
import struct

import numpy as np
import pytest

from engine.errors import MemoryFileError
from engine.memory_file import (FORMAT_VERSION, MAGIC, pack_offsets, read_header, read_memory, unpack_offsets,
                                write_memory)

HEADER = {"model_fingerprint": "a" * 64, "model_name": "Tiny", "backend": "gguf", "kept_tokens": 3}


def sample(tmp_path):
    path = tmp_path / "m.mem"
    sections = {"offsets": pack_offsets(np.array([0, 5, 9])), "state": os.urandom(5 << 20), "empty": b""}
    return path, sections, write_memory(path, HEADER, sections)


def test_round_trip(tmp_path):
    path, sections, size = sample(tmp_path)
    assert size == path.stat().st_size
    f = read_memory(path, model_fingerprint="a" * 64, backend="gguf")
    assert f.sections == sections
    assert f.header["format_version"] == FORMAT_VERSION and f.header["model_name"] == "Tiny"
    assert unpack_offsets(f.sections["offsets"]).tolist() == [0, 5, 9]
    assert read_header(path)["kept_tokens"] == 3


@pytest.mark.parametrize("cut", [4, 20, 200, -1000, -1])
def test_truncated(tmp_path, cut):
    path, _, size = sample(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(MemoryFileError, match="truncated"):
        read_memory(path)


@pytest.mark.parametrize("where", [100, -5000, -10])
def test_altered(tmp_path, where):
    path, _, _ = sample(tmp_path)
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MemoryFileError, match="altered or corrupted"):
        read_memory(path)


def test_not_a_memory_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + os.urandom(100))
    with pytest.raises(MemoryFileError, match="not a Comma memory file"):
        read_memory(path)
    with pytest.raises(MemoryFileError, match="not found"):
        read_memory(tmp_path / "missing.mem")


def test_other_format_version(tmp_path):
    header = json.dumps({**HEADER, "sections": []}).encode()
    path = tmp_path / "future.mem"
    path.write_bytes(struct.pack("<8sIQ", MAGIC, FORMAT_VERSION + 1, len(header)) + header + bytes(32))
    with pytest.raises(MemoryFileError, match=f"format version {FORMAT_VERSION + 1}"):
        read_memory(path)


def test_other_model_and_backend(tmp_path):
    path, _, _ = sample(tmp_path)
    with pytest.raises(MemoryFileError, match="another model \\(Tiny"):
        read_memory(path, model_fingerprint="b" * 64)
    with pytest.raises(MemoryFileError, match="'gguf' backend, not 'torch'"):
        read_memory(path, backend="torch")


def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path, _, _ = sample(tmp_path)
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.memory_file.os.fsync", no_space)
    with pytest.raises(MemoryFileError, match="not enough disk space.*unchanged"):
        write_memory(path, HEADER, {"state": b"new"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.mem"]
