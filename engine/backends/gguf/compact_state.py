"""The recall store's passages, quantised: a llama.cpp sequence state whose f16 keys are kept as
8-bit integers with one scale per channel of each layer (keys differ by channel more than by
token), and whose f16 values as 4-bit integers with one scale per 16 values of a token (values
differ by token): 41% of the state's size, where the store used to keep llama.cpp's f16 as it
was (the recall issue asks for at most 50%). This is KIVI's split of the two (Liu et al., 2024)
at wider widths. Measured with the bundled model: over 48 tokens of text after each of five
stored passages of GPL-3 and the Apache licence, the mean log-likelihood moved 0.0013 nats a
token from the f16 passages' (groups of 32 values, 39%: 0.0019; 8-bit values: 0.0026, so the
4-bit values are within this measure's noise); on one question after a passage, single tokens
moved up to 0.25 nats and the mean 0.075, either way (tests/engine/test_gguf_cache.py). Moving a
passage to other positions (llama.cpp's K-shift of f16 keys) moves single tokens further (1.6).

Only passages are compacted, when the read stores them; a memory's own state stays as llama.cpp
wrote it. ``expand`` gives back a state of the same layout, byte for byte outside the rows, with
the values rounded, and it is then checked like any other state. A state whose rows are not f16
(a quantised cache type) is kept as it is. The error this costs answers is measured by
tests/engine/test_gguf_cache.py.

Layout, little-endian::

    magic u32 (0x4b563834) | cells u32 | head_bytes u32 | head (the state up to the first row)
    | per layer row block, in the state's order: the bytes between the previous block and it
      (its type and sizes) as u32 length + bytes, then
      K: scales f16[channels] | int8[cells, channels]
      V: scales f16[cells, channels / 16] | uint8[cells, channels / 2] (two 4-bit values, +8)
    | the state's bytes after the last block (none, as llama.cpp writes it)
"""

from __future__ import annotations

import struct

import numpy as np

from engine.backends.gguf.sequence_state import Reader, state_layout
from engine.errors import MemoryFileError

MAGIC = 0x4B563834
F16 = 1  # ggml_type of an f16 row
GROUP = 16  # values of a token that share one scale
_HEAD = struct.Struct("<III")
_U32 = struct.Struct("<I")
_BAD = "a stored passage's compacted KV is damaged"


def is_compact(state: bytes) -> bool:
    return len(state) >= 4 and _U32.unpack_from(state)[0] == MAGIC


def compact(state: bytes, n_layer: int) -> bytes:
    """``state`` with its K and V rows quantised, or ``state`` itself when its rows are not all
    f16 of a width the groups divide."""
    positions, rows, spans = state_layout(state, n_layer)
    cells = len(positions)
    if not cells or any(kind != F16 or width % (2 * GROUP) for _, kind, width in rows):
        return state
    out = [_HEAD.pack(MAGIC, cells, spans[0][0]), state[:spans[0][0]]]
    previous = spans[0][0]
    for (part, _, width), (start, end) in zip(rows, spans, strict=True):
        between = state[previous:start]
        out += [_U32.pack(len(between)), between]
        values = np.frombuffer(state, np.float16, count=(end - start) // 2, offset=start)
        channels = width // 2
        matrix = values.reshape(channels, cells).T if part == 2 else values.reshape(cells, channels)
        out.append(_keys(matrix) if part == 0 else _values(matrix))
        previous = end
    out.append(state[previous:])
    return b"".join(out)


def _scale(peak: np.ndarray, levels: int) -> np.ndarray:
    scale = (peak / levels).astype(np.float16)
    return np.where(scale > 0, scale, np.float16(1.0))


def _keys(matrix: np.ndarray) -> bytes:
    x = matrix.astype(np.float32)
    scale = _scale(np.abs(x).max(axis=0), 127)
    q = np.clip(np.rint(x / scale.astype(np.float32)), -127, 127).astype(np.int8)
    return scale.tobytes() + q.tobytes()


def _values(matrix: np.ndarray) -> bytes:
    cells, channels = matrix.shape
    x = matrix.astype(np.float32).reshape(cells, channels // GROUP, GROUP)
    scale = _scale(np.abs(x).max(axis=2), 7)
    q = (np.clip(np.rint(x / scale[..., None].astype(np.float32)), -7, 7) + 8).astype(np.uint8)
    q = q.reshape(cells, channels)
    return scale.tobytes() + (q[:, 0::2] | (q[:, 1::2] << 4)).tobytes()


def expand(blob: bytes, n_layer: int, rows: tuple[tuple[int, int, int], ...]) -> bytes:
    """The llama.cpp state ``compact`` made ``blob`` from, for a model whose own state rows are
    ``rows`` (part, type, bytes a cell) over ``n_layer`` layers; the caller checks the result
    as it checks any state."""
    r = Reader(blob, _BAD)
    magic, cells, head = _HEAD.unpack(r.take(_HEAD.size))
    if magic != MAGIC or not 0 < cells <= 1 << 24 or len(rows) != 2 * n_layer:
        raise MemoryFileError(f"{_BAD} (its header)")
    out = [bytes(r.take(head))]
    for part, _, width in rows:
        (between,) = _U32.unpack(r.take(_U32.size))
        out.append(bytes(r.take(between)))
        channels = width // 2
        if part == 0:
            scale = np.frombuffer(r.take(2 * channels), np.float16).astype(np.float32)
            q = np.frombuffer(r.take(cells * channels), np.int8).reshape(cells, channels)
            matrix = q.astype(np.float32) * scale
        else:
            groups = channels // GROUP
            scale = np.frombuffer(r.take(2 * cells * groups), np.float16).astype(np.float32).reshape(cells, groups, 1)
            packed = np.frombuffer(r.take(cells * channels // 2), np.uint8).reshape(cells, channels // 2)
            q = np.empty((cells, channels), np.int8)
            q[:, 0::2] = (packed & 0x0F).astype(np.int8) - 8
            q[:, 1::2] = (packed >> 4).astype(np.int8) - 8
            matrix = (q.reshape(cells, groups, GROUP).astype(np.float32) * scale).reshape(cells, channels)
        halves = matrix.astype(np.float16)
        out.append((halves.T if part == 2 else halves).tobytes())
    out.append(bytes(blob[r.at:]))
    return b"".join(out)
