"""One llama.cpp context used as a compacted KV cache: append, evict, snapshot, restore.

The cache of sequence 0 always holds positions ``0..n-1``. Evicting removes the dropped slots
with ``llama_memory_seq_rm`` and slides every surviving run left with ``llama_memory_seq_add``,
which makes llama.cpp re-rotate those keys by the shift (RoPE is relative, so a key rotated by
its old position and then by the delta equals a key rotated by its new slot). Sequence 1 is a
scratch sequence for the one throwaway token that makes llama.cpp apply a pending shift.
Sequence 2 is where recall passages are serialised and loaded, and sequences 3.. are the
branches on which candidate passages are ranked side by side (engine.recall.store).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Protocol

import numpy as np

from engine.backends.gguf.compact_state import compact, expand, is_compact
from engine.backends.gguf.native import llama
from engine.backends.gguf.sequence_state import read_state
from engine.errors import CommaError, MemoryFileError
from engine.protocols import Logits


class LoadedWeights(Protocol):
    """What a cache needs of its model (``engine.backends.gguf.model.GGUFModel``, which makes
    caches, so the cache names only this)."""

    ptr: Any  # llama.cpp's model handle
    n_vocab: int
    n_layer: int
    bos: int

    @property
    def state_rows(self) -> tuple: ...

    def check_rows(self, rows: tuple) -> None: ...

    def check_state(self, state: bytes, n_tokens: int) -> None: ...

    def log_probs_at(self, logits: Any, targets: np.ndarray) -> np.ndarray: ...

MAIN, SCRATCH, SIDE = 0, 1, 2
BRANCHES = 8  # candidate passages scored side by side in one batch (sequences SIDE+1..)


class GGUFCache:
    """A KV cache of up to ``n_ctx`` slots over ``model``; tracks where each slot came from.

    It owns a llama.cpp context and a batch, freed by ``close()`` (or leaving a ``with`` block);
    it must be closed before its model.
    """

    def __init__(self, model: LoadedWeights, n_ctx: int, n_batch: int = 512, threads: int | None = None,
                 flash_attn: bool = True):
        self.model = model
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = SIDE + 1 + BRANCHES
        # One cell pool for all sequences, so the scratch sequence and the recall branches share
        # the main cache's cells instead of splitting the context.
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
        self._apply_shift()  # the cells are saved below, and a saved key must match its position
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if not mask[s] and not llama.llama_memory_seq_rm(self.memory, MAIN, s, e):
                raise CommaError("this model's KV cache refused a partial removal")
        self._pack_cells()
        new_pos = 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if not mask[s]:
                continue
            if s != new_pos:
                # Runs move left in order, so a moved run never lands on one still to move.
                llama.llama_memory_seq_add(self.memory, MAIN, s, e, new_pos - s)
                self._shift_pending = True
            new_pos += e - s
        self.offsets = self.offsets[keep]
        self.separators = self.separators[keep]

    def _pack_cells(self) -> None:
        """Move the main sequence's cells to the front of the cell pool, in order. Eviction leaves
        the kept slots scattered over the pool and the next chunk fills the holes between them;
        llama.cpp then reads a chunk ~15% slower than into packed cells (a 20K-token read, four
        alternated pairs, 514 against 593 tokens/s, the same perplexity), while saving and
        loading the ~324 kept slots costs a few milliseconds a chunk."""
        state = self._state_of(MAIN)
        llama.llama_memory_seq_rm(self.memory, MAIN, -1, -1)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama.llama_state_seq_set_data(self.ptr, buf, len(state), MAIN) == 0:
            raise CommaError("llama.cpp could not put the kept slots back into its cache")

    def truncate(self, length: int) -> None:
        """Drop every slot from ``length`` on (what a question and its answer added)."""
        length = min(length, self.length)
        llama.llama_memory_seq_rm(self.memory, MAIN, length, -1)
        self.offsets = self.offsets[:length]
        self.separators = self.separators[:length]
        self._tail = max(0, length - len(self.offsets))

    def remove(self, start: int, end: int) -> None:
        """Drop main slots ``[start, end)``; the slots after them slide left, keys re-rotated
        (as eviction does), so what follows is not computed again."""
        n = self.length
        if not 0 <= start <= end <= n:
            raise ValueError(f"cannot remove slots {start}..{end} of {n}")
        if start == end:
            return
        if not llama.llama_memory_seq_rm(self.memory, MAIN, start, end):
            raise CommaError("this model's KV cache refused a partial removal")
        if end < n:
            llama.llama_memory_seq_add(self.memory, MAIN, end, -1, start - end)
            self._shift_pending = True
        documents = len(self.offsets)
        gone = np.arange(start, min(end, documents))
        self.offsets = np.delete(self.offsets, gone)
        self.separators = np.delete(self.separators, gone)
        self._tail -= (end - start) - len(gone)

    def _apply_shift(self) -> None:
        if self._shift_pending:
            # llama.cpp re-rotates shifted keys only at the next decode, and a saved state would
            # carry new positions with keys still rotated for the old ones. One throwaway token
            # on the scratch sequence applies the shift.
            self._decode(np.array([max(self.model.bos, 0)]), 0, SCRATCH, Logits.NONE)
            llama.llama_memory_seq_rm(self.memory, SCRATCH, -1, -1)

    def _state_of(self, seq: int) -> bytes:
        size = llama.llama_state_seq_get_size(self.ptr, seq)
        buf = (ctypes.c_uint8 * size)()
        written = llama.llama_state_seq_get_data(self.ptr, buf, size, seq)
        return bytes(memoryview(buf)[:written])

    def snapshot(self) -> bytes:
        """The main sequence's KV state as llama.cpp serialises it."""
        self._apply_shift()
        return self._state_of(MAIN)

    def export_slots(self, start: int, end: int) -> bytes:
        """The KV of main slots ``[start, end)`` alone, as the read computed it, compacted
        (engine/backends/gguf/compact_state.py): a recall passage.

        A side sequence shares those cells for the moment it takes to serialise them, so no KV
        is copied inside llama.cpp."""
        self._apply_shift()
        llama.llama_memory_seq_rm(self.memory, SIDE, -1, -1)
        llama.llama_memory_seq_cp(self.memory, MAIN, SIDE, start, end)
        try:
            state = self._state_of(SIDE)
        finally:
            llama.llama_memory_seq_rm(self.memory, SIDE, -1, -1)
        return compact(state, self.model.n_layer)

    def _load_at(self, state: bytes, n_tokens: int, seq: int, position: int | None) -> int:
        """Load a passage saved by ``export_slots`` into ``seq``: at ``position..``, re-rotating its
        keys for the new positions, or where it was read when ``position`` is None (no shift).
        Returns the position after its last token. A store written before compaction holds
        llama.cpp's own states, which load as they are."""
        if is_compact(state):
            state = expand(state, self.model.n_layer, self.model.state_rows)
        positions, rows = read_state(state, self.model.n_layer)
        positions = np.sort(positions)
        if len(positions) != n_tokens or np.any(np.diff(positions) != 1):
            raise MemoryFileError(f"a stored passage's KV is not {n_tokens} tokens at consecutive positions "
                                  "(altered, or not this passage's)")
        self.model.check_rows(rows)
        llama.llama_memory_seq_rm(self.memory, SIDE, -1, -1)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        read = llama.llama_state_seq_set_data(self.ptr, buf, len(state), SIDE)
        low = llama.llama_memory_seq_pos_min(self.memory, SIDE)
        high = llama.llama_memory_seq_pos_max(self.memory, SIDE)
        if read == 0 or high - low + 1 != n_tokens:
            llama.llama_memory_seq_rm(self.memory, SIDE, -1, -1)
            raise MemoryFileError(f"a stored passage did not load into this model (expected {n_tokens} "
                                  f"tokens, found {max(high - low + 1, 0)})")
        if position is not None and low != position:
            # llama.cpp re-rotates the keys of its whole cache at the next decode: a cost worth
            # paying once per answer, not once per ranked passage.
            llama.llama_memory_seq_add(self.memory, SIDE, -1, -1, position - low)
            self._shift_pending = True
            high += position - low
        llama.llama_memory_seq_cp(self.memory, SIDE, seq, -1, -1)
        llama.llama_memory_seq_rm(self.memory, SIDE, -1, -1)
        return high + 1

    def import_slots(self, state: bytes, offsets: np.ndarray) -> None:
        """Append a stored passage at the end: right after the document slots it is one of them
        (``offsets`` are its document offsets); after conversation tokens (a follow-up's own
        passages) it is part of the conversation, which carries no offsets."""
        if self.length + len(offsets) > self.n_ctx:
            raise CommaError(f"the cache would hold {self.length + len(offsets)} tokens but has room for {self.n_ctx}")
        self._load_at(state, len(offsets), MAIN, self.length)
        if self._tail:
            self._tail += len(offsets)
            return
        self.offsets = np.concatenate([self.offsets, np.asarray(offsets, dtype=np.int64)])
        self.separators = np.concatenate([self.separators, np.zeros(len(offsets), dtype=bool)])

    def log_probs_after(self, branches: list[list[tuple[bytes, int]]], tokens: np.ndarray, scored: int,
                        prefix: int) -> np.ndarray:
        """For each branch (stored passages as ``(state, n_tokens)``), the log-probabilities of the
        last ``scored`` of ``tokens`` when they follow the main sequence's first ``prefix`` slots
        and the passages: ``[len(branches), scored]``.

        A passage's first piece keeps the positions it was read at (``prefix`` must end before
        them: the memory's first slots, its attention sinks), so a one-piece passage is ranked
        exactly as read with no key re-rotated; a later piece (read in the next chunk, after
        eviction moved the cache) is moved to follow the one before it, and ``tokens`` follow
        the last. Each branch is its own sequence sharing the prefix's cells, so only ``tokens``
        are computed, for up to BRANCHES branches in one batch; the main sequence is left as it
        was."""
        tokens = np.asarray(tokens, dtype=np.int32)
        if not 0 < scored < len(tokens) or len(tokens) > self.n_batch:
            raise ValueError(f"cannot score {scored} of {len(tokens)} tokens in batches of {self.n_batch}")
        out = np.zeros((len(branches), scored), dtype=np.float64)
        targets = tokens[len(tokens) - scored:]
        per_batch = max(1, min(BRANCHES, self.n_batch // len(tokens)))
        lo = 0
        while lo < len(branches):
            # As many branches as one batch takes and the free cells hold.
            free = self.n_ctx - self.length
            chunk: list[list[tuple[bytes, int]]] = []
            for pieces in branches[lo:lo + per_batch]:
                need = sum(n for _, n in pieces) + len(tokens)
                if need > free:
                    break
                chunk.append(pieces)
                free -= need
            if not chunk:
                raise CommaError(f"a passage of {sum(n for _, n in branches[lo])} tokens does not fit the "
                                 f"{self.n_ctx - self.length} free slots of this cache")
            seqs = [SIDE + 1 + i for i in range(len(chunk))]
            try:
                ends = []
                for seq, pieces in zip(seqs, chunk, strict=True):
                    llama.llama_memory_seq_rm(self.memory, seq, -1, -1)
                    llama.llama_memory_seq_cp(self.memory, MAIN, seq, 0, prefix)
                    end = prefix
                    for k, (state, n) in enumerate(pieces):
                        end = self._load_at(state, n, seq, None if k == 0 else end)
                    ends.append(end)
                b = self._batch
                i = 0
                for seq, start in zip(seqs, ends, strict=True):
                    for j, tok in enumerate(tokens):
                        b.token[i] = int(tok)
                        b.pos[i] = start + j
                        b.n_seq_id[i] = 1
                        b.seq_id[i][0] = seq
                        b.logits[i] = j >= len(tokens) - scored - 1 and j < len(tokens) - 1
                        i += 1
                b.n_tokens = i
                rc = llama.llama_decode(self.ptr, b)
                if rc != 0:
                    raise CommaError(f"llama.cpp failed to score passages (code {rc})")
                self._shift_pending = False
                rows = np.ctypeslib.as_array(llama.llama_get_logits(self.ptr), shape=(scored * len(chunk), self.model.n_vocab))
                for k in range(len(chunk)):
                    out[lo + k] = self.model.log_probs_at(rows[k * scored:(k + 1) * scored], targets)
            finally:
                for seq in seqs:
                    llama.llama_memory_seq_rm(self.memory, seq, -1, -1)
            lo += len(chunk)
        return out

    def restore(self, state: bytes, offsets: np.ndarray, separators: np.ndarray) -> None:
        """Load a snapshot into the (empty) main sequence and check that it really arrived."""
        self.model.check_state(state, len(offsets))
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

    def decode_main_tail(self, tokens: np.ndarray) -> np.ndarray:
        """Decode prompt or answer tokens after the memory; they carry no document offsets."""
        if self.length + len(tokens) > self.n_ctx:
            raise CommaError(f"the conversation would need {self.length + len(tokens)} cache slots; "
                             f"this cache has {self.n_ctx}")
        logits = self._decode(np.asarray(tokens), self.length, MAIN, Logits.LAST)
        assert logits is not None
        self._tail += len(tokens)
        return logits
