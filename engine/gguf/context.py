"""One llama.cpp context used as a compacted KV cache: append, evict, snapshot, restore.

The cache of sequence 0 always holds positions ``0..n-1``. Evicting removes the dropped slots
with ``llama_memory_seq_rm`` and slides every surviving run left with ``llama_memory_seq_add``,
which makes llama.cpp re-rotate those keys by the shift (RoPE is relative, so a key rotated by
its old position and then by the delta equals a key rotated by its new slot). Sequence 1 is a
scratch branch for side generations (section notes) that must not disturb sequence 0.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import CommaError, MemoryFileError
from engine.gguf.native import llama
from engine.protocols import Logits

if TYPE_CHECKING:
    from engine.gguf.model import GGUFModel

MAIN, SCRATCH = 0, 1


class GGUFCache:
    """A KV cache of up to ``n_ctx`` slots over ``model``; tracks where each slot came from.

    It owns a llama.cpp context and a batch, freed by ``close()`` (or leaving a ``with`` block);
    it must be closed before its model.
    """

    def __init__(self, model: GGUFModel, n_ctx: int, n_batch: int = 512, threads: int | None = None,
                 flash_attn: bool = True):
        self.model = model
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = 2
        # One cell pool for both sequences, so the scratch branch shares the main cache's cells
        # instead of splitting the context in two.
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads or os.cpu_count() or 1
        # Flash attention reads a chunk after a few hundred cached tokens ~15% faster on the CPU
        # (bench/cpu_ceiling.py), and allows a quantised V cache.
        params.flash_attn_type = (llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.ptr = llama.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise CommaError(f"llama.cpp could not make a context of {n_ctx} tokens (out of memory?)")
        self.n_ctx = llama.llama_n_ctx(self.ptr)
        self.n_batch = n_batch
        self.memory = llama.llama_get_memory(self.ptr)
        self._batch = llama.llama_batch_init(n_batch, 0, 1)
        self.offsets = np.zeros(0, dtype=np.int64)
        self.separators = np.zeros(0, dtype=bool)
        self._shift_pending = False
        # Prompt and answer tokens after the document slots: counted, not tracked per slot, so
        # generating a token does not grow two arrays.
        self._tail = 0

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama.llama_batch_free(self._batch)
            llama.llama_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> GGUFCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    @property
    def length(self) -> int:
        return len(self.offsets) + self._tail

    def _decode(self, tokens: np.ndarray, start_pos: int, seq: int, want_logits: Logits) -> np.ndarray | None:
        """Decode ``tokens`` at positions ``start_pos..``; return logits per ``want_logits``:
        the last position's as a vocabulary-sized vector, or every position's as ``[n, vocab]``."""
        outputs = []
        b = self._batch
        for lo in range(0, len(tokens), self.n_batch):
            piece = tokens[lo:lo + self.n_batch]
            n = len(piece)
            last_piece = lo + n == len(tokens)
            for i, tok in enumerate(piece):
                b.token[i] = int(tok)
                b.pos[i] = start_pos + lo + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = want_logits is Logits.ALL or (want_logits is Logits.LAST and last_piece and i == n - 1)
            b.n_tokens = n
            rc = llama.llama_decode(self.ptr, b)
            if rc != 0:
                raise CommaError(f"llama.cpp failed to decode (code {rc}); the context may be full")
            self._shift_pending = False
            if want_logits is Logits.ALL:
                ptr = llama.llama_get_logits(self.ptr)
                outputs.append(np.ctypeslib.as_array(ptr, shape=(n, self.model.n_vocab)).copy())
        if want_logits is Logits.LAST:
            ptr = llama.llama_get_logits_ith(self.ptr, -1)
            return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()
        if want_logits is Logits.ALL:
            return np.concatenate(outputs)
        return None

    def append(self, tokens: np.ndarray, offsets: np.ndarray, separators: np.ndarray,
               logits: Logits = Logits.NONE) -> np.ndarray | None:
        """Add ``tokens`` at the end of the main sequence; ``offsets`` are their places in the document."""
        if self.length + len(tokens) > self.n_ctx:
            raise CommaError(
                f"the cache would hold {self.length + len(tokens)} tokens but has room for {self.n_ctx}"
            )
        out = self._decode(np.asarray(tokens), self.length, MAIN, logits)
        self.offsets = np.concatenate([self.offsets, np.asarray(offsets, dtype=np.int64)])
        self.separators = np.concatenate([self.separators, np.asarray(separators, dtype=bool)])
        return out

    def evict(self, keep: np.ndarray) -> None:
        """Keep only the slots ``keep`` (ascending) and renumber the cache to ``0..len(keep)-1``."""
        n = self.length
        mask = np.zeros(n, dtype=bool)
        mask[keep] = True
        # Runs of equal mask values: [start, end) for each.
        edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [n]])
        new_pos = 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if not mask[s]:
                if not llama.llama_memory_seq_rm(self.memory, MAIN, s, e):
                    raise CommaError("this model's KV cache refused a partial removal")
                continue
            if s != new_pos:
                # Runs move left in order, so a moved run never lands on one still to move.
                llama.llama_memory_seq_add(self.memory, MAIN, s, e, new_pos - s)
                self._shift_pending = True
            new_pos += e - s
        self.offsets = self.offsets[keep]
        self.separators = self.separators[keep]

    def truncate(self, length: int) -> None:
        """Drop every slot from ``length`` on (what a question and its answer added)."""
        llama.llama_memory_seq_rm(self.memory, MAIN, length, -1)
        self.offsets = self.offsets[:length]
        self.separators = self.separators[:length]
        self._tail = max(0, length - len(self.offsets))

    def snapshot(self) -> bytes:
        """The main sequence's KV state as llama.cpp serialises it."""
        if self._shift_pending:
            # llama.cpp re-rotates shifted keys only at the next decode, and a saved state would
            # carry new positions with keys still rotated for the old ones. One throwaway token
            # on the scratch sequence applies the shift.
            self._decode(np.array([max(self.model.bos, 0)]), 0, SCRATCH, Logits.NONE)
            self.drop_scratch()
        size = llama.llama_state_seq_get_size(self.ptr, MAIN)
        buf = (ctypes.c_uint8 * size)()
        written = llama.llama_state_seq_get_data(self.ptr, buf, size, MAIN)
        return bytes(memoryview(buf)[:written])

    def restore(self, state: bytes, offsets: np.ndarray, separators: np.ndarray) -> None:
        """Load a snapshot into the (empty) main sequence and check that it really arrived."""
        llama.llama_memory_seq_rm(self.memory, MAIN, -1, -1)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        read = llama.llama_state_seq_set_data(self.ptr, buf, len(state), MAIN)
        pos_max = llama.llama_memory_seq_pos_max(self.memory, MAIN)
        # llama.cpp checks only layer count and sizes; a restore that silently did nothing
        # shows up as a position count that does not match what the header promised.
        if read == 0 or pos_max != len(offsets) - 1:
            raise MemoryFileError(
                f"the memory's KV state did not load into this model (expected {len(offsets)} "
                f"tokens, found {pos_max + 1}); read the document again with --force"
            )
        self._tail = 0
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.separators = np.asarray(separators, dtype=bool)

    def fork_scratch(self) -> None:
        """Make sequence 1 share sequence 0's cache (no copy of KV data in llama.cpp)."""
        llama.llama_memory_seq_rm(self.memory, SCRATCH, -1, -1)
        llama.llama_memory_seq_cp(self.memory, MAIN, SCRATCH, -1, -1)

    def drop_scratch(self) -> None:
        llama.llama_memory_seq_rm(self.memory, SCRATCH, -1, -1)

    def decode_scratch(self, tokens: np.ndarray, start_pos: int) -> np.ndarray:
        """Decode on the scratch branch; returns the last token's logits."""
        logits = self._decode(np.asarray(tokens), start_pos, SCRATCH, Logits.LAST)
        assert logits is not None
        return logits

    def decode_main_tail(self, tokens: np.ndarray) -> np.ndarray:
        """Decode prompt or answer tokens after the memory; they carry no document offsets."""
        if self.length + len(tokens) > self.n_ctx:
            raise CommaError(f"the conversation would need {self.length + len(tokens)} cache slots; "
                             f"this cache has {self.n_ctx}")
        logits = self._decode(np.asarray(tokens), self.length, MAIN, Logits.LAST)
        assert logits is not None
        self._tail += len(tokens)
        return logits
