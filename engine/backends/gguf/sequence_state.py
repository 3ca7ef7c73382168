"""Reads the cell table of a llama.cpp sequence state, so that a memory cannot place its KV anywhere.

``llama_state_seq_set_data`` checks a state's layer count and row sizes, not the positions its
cells claim: a memory whose cells all say position n-1, or run backwards, or start at -5, loads
and decodes, and its answers and pages are then whatever the file says. So before a state is
handed to llama.cpp, its layout (``llama_kv_cache::state_write`` of the llama.cpp that
llama-cpp-python 0.3.x vendors, one unified stream) is walked here to its exact end, and the
caller compares the positions with the slots it expects.

Layout, little-endian::

    magic u32 (0xaf143cd8) | the saved sequence's id i32
    | n_stream u32 | per stream: cell_count u32, and when it is not 0:
      cell_count x (pos i32 | n_seq_id u32 | n_seq_id x seq_id i32)
      | v_trans u32 | n_layer u32
      | n_layer x (k_type i32 | k_row_bytes u64 | cell_count x k_row_bytes)
      | n_layer x (v_type i32 | v_row_bytes u64 | cell_count x v_row_bytes)        (v_trans 0)
      | n_layer x (v_type i32 | v_el_bytes u32 | n_embd_v u32 | n_embd_v x cell_count x v_el_bytes)  (v_trans 1)
"""

from __future__ import annotations

import struct

import numpy as np

from engine.errors import MemoryFileError

_U32 = struct.Struct("<I")
_PREFIX = struct.Struct("<Ii")  # magic, sequence id
IO_MAGIC = 0xAF143CD8
_ROW = struct.Struct("<iQ")  # type, bytes per row
_V_TRANSPOSED = struct.Struct("<iII")  # type, bytes per element, elements per cell
MAX_SEQUENCES_PER_CELL = 64
_BAD = "the memory's KV state is not one this model's llama.cpp wrote"


class Reader:
    """Bytes taken in order; running out is a MemoryFileError that begins with ``bad``."""

    def __init__(self, data: bytes, bad: str = _BAD):
        self.data, self.at, self.bad = memoryview(data), 0, bad

    def take(self, n: int) -> memoryview:
        if n < 0 or self.at + n > len(self.data):
            raise MemoryFileError(f"{self.bad} (it ends early)")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))


def _positions(r: Reader, cells: int) -> np.ndarray:
    # Every cell of one sequence's state lists the same number of sequences (the one saved), so
    # the table is read at once from the first cell's count.
    head = r.data[r.at:r.at + 8]
    if len(head) < 8:
        raise MemoryFileError(f"{_BAD} (it ends early)")
    (per_cell,) = _U32.unpack_from(head, 4)
    if not 1 <= per_cell <= MAX_SEQUENCES_PER_CELL:
        raise MemoryFileError(f"{_BAD} (its cells name {per_cell} sequences)")
    table = np.frombuffer(r.take(cells * 4 * (2 + per_cell)), dtype="<i4").reshape(cells, 2 + per_cell)
    if np.any(table[:, 1] != per_cell):
        raise MemoryFileError(f"{_BAD} (its cells name different numbers of sequences)")
    return table[:, 0].astype(np.int64)


def _skip_kv(r: Reader, cells: int, n_layer: int) -> tuple[tuple[tuple[int, int, int], ...], list[tuple[int, int]]]:
    """Step over the layers' rows; returns each one's (part, type, bytes a cell): part 0 for K,
    1 for V, 2 for a transposed V; and where each one's rows lie in the state (start, end)."""
    (v_trans,) = r.unpack(_U32)
    (layers,) = r.unpack(_U32)
    if v_trans not in (0, 1) or layers != n_layer:
        raise MemoryFileError(f"{_BAD} (it has {layers} layers; this model has {n_layer})")
    rows, spans = [], []
    for _ in range(layers):
        kind, row = r.unpack(_ROW)
        spans.append((r.at, r.at + cells * row))
        r.take(cells * row)
        rows.append((0, kind, row))
    for _ in range(layers):
        if v_trans:
            kind, element, width = r.unpack(_V_TRANSPOSED)
            spans.append((r.at, r.at + cells * element * width))
            r.take(cells * element * width)
            rows.append((2, kind, element * width))
        else:
            kind, row = r.unpack(_ROW)
            spans.append((r.at, r.at + cells * row))
            r.take(cells * row)
            rows.append((1, kind, row))
    return tuple(rows), spans


def state_layout(state: bytes, n_layer: int) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...], list[tuple[int, int]]]:
    """``read_state``, and where each layer's K and V rows lie in ``state`` (start, end): the
    recall store's compaction (engine/backends/gguf/compact_state.py) rewrites only those."""
    r = Reader(state)
    magic, _ = r.unpack(_PREFIX)
    if magic != IO_MAGIC:
        raise MemoryFileError(f"{_BAD} (it does not begin as a llama.cpp sequence state)")
    (streams,) = r.unpack(_U32)
    if streams != 1:
        raise MemoryFileError(f"{_BAD} (it has {streams} cell streams; Comma's caches have one)")
    (cells,) = r.unpack(_U32)
    positions = np.zeros(0, dtype=np.int64)
    rows: tuple[tuple[int, int, int], ...] = ()
    spans: list[tuple[int, int]] = []
    if cells:
        positions = _positions(r, cells)
        rows, spans = _skip_kv(r, cells, n_layer)
    if r.at != len(r.data):
        raise MemoryFileError(f"{_BAD} ({len(r.data) - r.at} bytes follow its last layer)")
    return positions, rows, spans


def read_state(state: bytes, n_layer: int) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    """The position of every cell in ``state`` (in the order llama.cpp saved them) and its
    layers' row layout (part, type, bytes a cell), once the whole state is known to be one
    sequence's cells and ``n_layer`` layers of their KV, to the last byte. Raises
    ``MemoryFileError`` otherwise. Rows of another size than the model's own mean the state
    claims cells it does not hold: the caller compares the layout with one of its own."""
    positions, rows, _ = state_layout(state, n_layer)
    return positions, rows
