"""Reading a llama.cpp sequence state's cell table: exact to the last byte, and any damage is a
MemoryFileError, never an allocation sized from the damage. (The states here are built by
hand in llama.cpp's layout; tests/engine/test_gguf_cache.py checks real ones.)"""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.backends.gguf.sequence_state import IO_MAGIC, read_state
from engine.errors import MemoryFileError

LAYERS, K_ROW, V_ROW = 3, 8, 6


def state(positions, layers=LAYERS, streams=1, per_cell=1, v_trans=0, tail=b"") -> bytes:
    n = len(positions)
    out = struct.pack("<IiII", IO_MAGIC, 0, streams, n)
    for p in positions:
        out += struct.pack("<iI", p, per_cell) + struct.pack("<i", 0) * per_cell
    out += struct.pack("<II", v_trans, layers)
    for _ in range(layers):
        out += struct.pack("<iQ", 1, K_ROW) + bytes(n * K_ROW)
    for _ in range(layers):
        out += struct.pack("<iII", 1, 2, V_ROW // 2) + bytes(n * V_ROW) if v_trans else \
            struct.pack("<iQ", 1, V_ROW) + bytes(n * V_ROW)
    return out + tail


def cell_positions(state, layers):
    return read_state(state, layers)[0]


def test_the_rows_layout_is_read():
    assert read_state(state([0, 1]), LAYERS)[1] == ((0, 1, K_ROW),) * LAYERS + ((1, 1, V_ROW),) * LAYERS
    assert read_state(state([0], v_trans=1), LAYERS)[1] == ((0, 1, K_ROW),) * LAYERS + ((2, 1, V_ROW),) * LAYERS


def test_positions_are_read_in_cell_order():
    assert cell_positions(state([0, 1, 5, 2]), LAYERS).tolist() == [0, 1, 5, 2]
    assert cell_positions(state([3, 4], v_trans=1), LAYERS).tolist() == [3, 4]
    assert cell_positions(state([7], per_cell=2), LAYERS).tolist() == [7]


def test_an_empty_sequence_has_no_cells():
    assert cell_positions(struct.pack("<IiII", IO_MAGIC, 0, 1, 0), LAYERS).tolist() == []


@pytest.mark.parametrize("damaged, words", [
    (state([0, 1], tail=b"\0"), "1 bytes follow its last layer"),
    (state([0, 1])[:-1], "ends early"),
    (state([0, 1], layers=2), "it has 2 layers; this model has 3"),
    (state([0, 1], streams=2), "2 cell streams"),
    (state([0, 1], per_cell=0), "name 0 sequences"),
    (struct.pack("<IiII", 0x12345678, 0, 1, 0), "does not begin as"),
    (struct.pack("<IiII", IO_MAGIC, 0, 1, 2**32 - 1) + struct.pack("<iI", 0, 1), "ends early"),
    (b"", "ends early"),
])
def test_a_damaged_state_is_refused(damaged, words):
    with pytest.raises(MemoryFileError, match=words):
        cell_positions(damaged, LAYERS)


def test_cells_naming_different_numbers_of_sequences_are_refused():
    good = bytearray(state([0, 1, 2]))
    struct.pack_into("<I", good, 16 + 12 + 4, 2)  # the second cell's n_seq_id
    with pytest.raises(MemoryFileError):
        cell_positions(bytes(good), LAYERS)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(n=st.integers(0, 40), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 64))
def test_any_damage_is_refused_or_read_exactly(n, edits, cut):
    data = bytearray(state(list(range(n))))
    for where, value in edits:
        data[where % len(data)] = value
    data = data[:len(data) - cut] if cut < len(data) else data
    try:
        positions = cell_positions(bytes(data), LAYERS)
    except MemoryFileError:
        return
    # What is accepted holds exactly the cells it says it has.
    assert len(positions) == struct.unpack_from("<I", data, 12)[0]
    assert positions.dtype == np.int64
