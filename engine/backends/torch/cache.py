"""A compacted KV cache in one tensor, as a transformers ``Cache``: append, evict, snapshot, restore.

Every layer's keys and values live in one ``[layers, 2, rows, kv_heads, capacity, head_dim]``
tensor, keys before RoPE. Row ``b`` holds its valid slots at ``0..length[b]-1``; a forward pass
writes its tokens after them (``update`` is what the model's attention layers call) and the
attention kernels rotate by slot. Evicting gathers the surviving slots of all layers into place
in one kernel launch, and since keys were cached unrotated, nothing has to be re-rotated: the
cache after an eviction is exactly the cache those tokens would have had at their new slots.

One row is a document being read or asked about. Several rows are independent chunks read
side by side (parallel chunks).

It offers the same methods as the gguf backend's cache, so ``engine.reading.reader`` and
``engine.answering.conversation`` drive either one, recall included: a stored passage is its slots' keys
(unrotated) and values, so loading it anywhere places it exactly, with nothing to re-rotate.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers.cache_utils import Cache, CacheLayerMixin

from engine.backends.torch.attention import Slots
from engine.errors import CommaError, MemoryFileError
from engine.protocols import Logits

RANK_ROWS = 4  # candidate passages ranked side by side, each a row of one side cache


class SlotLayer(CacheLayerMixin):
    """One model layer's view of the shared slot tensor."""

    is_sliding = False

    def __init__(self, cache: SlotCache, index: int):
        super().__init__()
        self.cache, self.index = cache, index
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        return None

    def update(self, key_states, value_states, *args, **kwargs):
        return self.cache.write(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.capacity, 0

    def get_seq_length(self) -> int:
        return int(self.cache.lengths.max())

    def get_max_length(self) -> int:
        return self.cache.capacity


def read_kv(state: bytes, shape, slots: int) -> torch.Tensor:
    """A snapshot's ``kv`` tensor, refused unless it is ``slots`` slots of a model of ``shape``."""
    try:
        kv = load_tensors(state)["kv"]
    except Exception as exc:  # safetensors raises its own error types for damaged bytes
        raise MemoryFileError(f"the memory's tensors cannot be read ({exc}); read the document "
                              "again with --force") from exc
    expected = (shape.layers, 2, shape.kv_heads, slots, shape.head_dim)
    if tuple(kv.shape) != expected:
        raise MemoryFileError(f"the memory's tensors have shape {tuple(kv.shape)}, but this model "
                              f"needs {expected}; read the document again with --force")
    return kv


class SlotCache(Cache):
    def __init__(self, model, capacity: int, rows: int = 1):
        self.model = model
        cfg = model.shape
        super().__init__(layers=[SlotLayer(self, i) for i in range(cfg.layers)])
        self.capacity, self.rows = capacity, rows
        try:
            self.kv = torch.empty(cfg.layers, 2, rows, cfg.kv_heads, capacity, cfg.head_dim,
                                  dtype=model.dtype, device=model.device)
        except torch.OutOfMemoryError as exc:
            raise CommaError(f"not enough GPU memory for a cache of {capacity} tokens × {rows} rows; "
                             "use a smaller --cache") from exc
        self.lengths = np.zeros(rows, dtype=np.int64)  # valid slots per row, before a forward's tokens
        self._row_offsets = [np.zeros(0, dtype=np.int64) for _ in range(rows)]
        self._row_separators = [np.zeros(0, dtype=bool) for _ in range(rows)]
        self._paid: torch.Tensor | None = None  # see record_attention

    @property
    def n_ctx(self) -> int:
        """Slots per row: the contract's name for the capacity."""
        return self.capacity

    def close(self) -> None:
        """Give the slot tensor's memory back (on a GPU, at once rather than at collection)."""
        self.kv = torch.empty(0, dtype=self.kv.dtype, device=self.kv.device)
        self.lengths[:] = 0

    def __enter__(self) -> SlotCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what transformers calls --------------------------------------------------------------

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        """Store a forward pass's keys and values after each row's slots; return the full buffers."""
        n = keys.shape[2]
        starts = self.lengths
        if (starts == starts[0]).all():
            s = int(starts[0])
            self.kv[layer, 0, :, :, s:s + n] = keys
            self.kv[layer, 1, :, :, s:s + n] = values
        else:
            for b, s in enumerate(starts.tolist()):
                self.kv[layer, 0, b, :, s:s + n] = keys[b]
                self.kv[layer, 1, b, :, s:s + n] = values[b]
        return self.kv[layer, 0], self.kv[layer, 1]

    # -- the forward pass ---------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tokens: np.ndarray, logits: Logits = Logits.NONE):
        """Run ``tokens [rows, n]`` after every row's slots; hand back the logits asked for
        (``Logits.ALL`` stays on the device as a tensor; ``Logits.LAST`` comes to the host)."""
        tokens = np.atleast_2d(np.asarray(tokens))
        n = tokens.shape[1]
        if int(self.lengths.max()) + n > self.capacity:
            raise CommaError(f"the cache would hold {int(self.lengths.max()) + n} tokens but has room "
                             f"for {self.capacity}")
        after = self.lengths + n
        cos, sin = self.model.rope(self.capacity)
        slots = Slots(torch.as_tensor(after, dtype=torch.int32, device=self.model.device), cos, sin, self._paid)
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.model.device)
        positions = torch.as_tensor(self.lengths[:, None] + np.arange(n), device=self.model.device)
        with self.model.out_of_memory_message():
            if logits is Logits.NONE:
                # The base model alone: reading needs no output projection.
                self.model.hf.model(input_ids=ids, position_ids=positions, past_key_values=self,
                                    use_cache=True, comma_slots=slots)
                out = None
            else:
                result = self.model.hf(input_ids=ids, position_ids=positions, past_key_values=self,
                                       use_cache=True, logits_to_keep=1 if logits is Logits.LAST else 0,
                                       comma_slots=slots)
                # Every position's logits stay on the device (scoring reduces them there); the
                # last position's go to the host for sampling.
                out = result.logits if logits is Logits.ALL else result.logits.float().cpu().numpy()
        # Only a forward that completed advances the rows; a failed one leaves them as they were.
        self.lengths = after
        if out is not None and self.rows == 1:
            return out[0]
        return out

    # -- the reader's and conversation's interface (row 0) ----------------------------------

    @property
    def length(self) -> int:
        return int(self.lengths[0])

    @property
    def offsets(self) -> np.ndarray:
        return self._row_offsets[0]

    @property
    def separators(self) -> np.ndarray:
        return self._row_separators[0]

    def append(self, tokens: np.ndarray, offsets: np.ndarray, separators: np.ndarray,
               logits: Logits = Logits.NONE):
        out = self.forward(np.asarray(tokens)[None], logits)
        self._row_offsets[0] = np.concatenate([self.offsets, np.asarray(offsets, dtype=np.int64)])
        self._row_separators[0] = np.concatenate([self.separators, np.asarray(separators, dtype=bool)])
        return out

    def evict(self, keep: np.ndarray) -> None:
        self.evict_rows([keep])

    def truncate(self, length: int) -> None:
        self.lengths[0] = length
        self._row_offsets[0] = self.offsets[:length]
        self._row_separators[0] = self.separators[:length]

    def decode_main_tail(self, tokens: np.ndarray) -> np.ndarray:
        return self.forward(np.asarray(tokens)[None], Logits.LAST)[-1]

    # -- several rows (parallel chunks) --------------------------------------------------------

    def append_rows(self, tokens: np.ndarray, offsets: np.ndarray, separators: np.ndarray,
                    valid: np.ndarray) -> None:
        """Append ``tokens [rows, n]``; row ``b`` keeps only its first ``valid[b]`` of them.

        Rows shorter than ``n`` are padded at the end: causal attention keeps the padding out
        of every real token's view, and dropping it from the length forgets it.
        """
        self.forward(tokens, Logits.NONE)
        self.lengths = self.lengths - tokens.shape[1] + np.asarray(valid)
        for b, v in enumerate(np.asarray(valid).tolist()):
            self._row_offsets[b] = np.concatenate([self._row_offsets[b], offsets[b, :v]])
            self._row_separators[b] = np.concatenate([self._row_separators[b], separators[b, :v]])

    def row(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        return self._row_offsets[b], self._row_separators[b]

    def restore_rows(self, kv: torch.Tensor, sizes: np.ndarray) -> None:
        """Load slots saved side by side (``kv [layers, 2, kv_heads, slots, head_dim]``), ``sizes[b]``
        of them into row ``b``: each chunk of a parallel memory back in its own row."""
        start = 0
        for row, size in enumerate(np.asarray(sizes).tolist()):
            self.kv[:, :, row, :, :size] = kv[:, :, :, start:start + size].to(self.kv.device, self.kv.dtype)
            start += size
        self.lengths = np.asarray(sizes, dtype=np.int64).copy()

    def evict_rows(self, keeps: list[np.ndarray | None]) -> None:
        """Keep only the slots ``keeps[b]`` (ascending) of each row; None keeps a row whole."""
        kept = [np.arange(self.lengths[b]) if k is None else np.asarray(k, dtype=np.int64)
                for b, k in enumerate(keeps)]
        self._compact(kept)
        for b, k in enumerate(kept):
            self._row_offsets[b] = self._row_offsets[b][k]
            self._row_separators[b] = self._row_separators[b][k]

    def _compact(self, kept: list[np.ndarray]) -> None:
        """Move each row's slots ``kept[b]`` to its front, all layers in one kernel launch."""
        counts = np.array([len(k) for k in kept], dtype=np.int64)
        table = np.zeros((self.rows, max(1, int(counts.max()))), dtype=np.int64)
        for b, k in enumerate(kept):
            table[b, :len(k)] = k
        compact = self.model.compaction()
        compact(self.kv, torch.as_tensor(table, device=self.model.device),
                torch.as_tensor(counts, dtype=torch.int32, device=self.model.device))
        self.lengths = counts

    # -- which slots an answer drew on (row 0) ------------------------------------------------

    def record_attention(self) -> None:
        """From now on, add up the attention every decoded token pays to each slot."""
        self._paid = torch.zeros(self.rows, self.capacity, dtype=torch.float32, device=self.model.device)

    def attention_paid(self) -> np.ndarray:
        """Row 0's attention per slot since ``record_attention`` (summed over decoded tokens,
        layers and heads); recording stops."""
        paid, self._paid = self._paid, None
        return np.zeros(self.capacity) if paid is None else paid[0].double().cpu().numpy()

    # -- recall passages (row 0) ---------------------------------------------------------------

    def export_slots(self, start: int, end: int) -> bytes:
        """The KV of slots ``[start, end)`` alone, as the read computed it: a recall passage."""
        return save_tensors({"kv": self.kv[:, :, 0, :, start:end].contiguous().cpu()})

    def import_slots(self, state: bytes, offsets: np.ndarray) -> None:
        """Append a stored passage at the end: right after the document slots it is one of them
        (``offsets`` are its document offsets); after conversation tokens it is part of them."""
        n = len(offsets)
        if self.length + n > self.capacity:
            raise CommaError(f"the cache would hold {self.length + n} tokens but has room for {self.capacity}")
        kv = read_kv(state, self.model.shape, n)
        at = self.length
        self.kv[:, :, 0, :, at:at + n] = kv.to(self.kv.device, self.kv.dtype)
        self.lengths[0] = at + n
        if at == len(self.offsets):
            self._row_offsets[0] = np.concatenate([self.offsets, np.asarray(offsets, dtype=np.int64)])
            self._row_separators[0] = np.concatenate([self.separators, np.zeros(n, dtype=bool)])

    def remove(self, start: int, end: int) -> None:
        """Drop slots ``[start, end)``; the later slots move into their place, their KV as it
        was (keys are rotated by slot when attended, so nothing is re-rotated)."""
        n = self.length
        if not 0 <= start <= end <= n:
            raise ValueError(f"cannot remove slots {start}..{end} of {n}")
        if start == end:
            return
        self._compact([np.concatenate([np.arange(start), np.arange(end, n)])])
        gone = np.arange(start, min(end, len(self.offsets)))
        self._row_offsets[0] = np.delete(self.offsets, gone)
        self._row_separators[0] = np.delete(self.separators, gone)

    @torch.inference_mode()
    def log_probs_after(self, branches: list[list[tuple[bytes, int]]], tokens: np.ndarray, scored: int,
                        prefix: int) -> np.ndarray:
        """For each branch (stored passages as ``(state, n_tokens)``), the log-probabilities of the
        last ``scored`` of ``tokens`` when they follow this cache's first ``prefix`` slots and the
        passages: ``[len(branches), scored]``. Branches are rows of a side cache, RANK_ROWS at a
        time in one forward pass; this cache is left as it was."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if not 0 < scored < len(tokens):
            raise ValueError(f"cannot score {scored} of {len(tokens)} tokens")
        shape = self.model.shape
        loaded = [[read_kv(state, shape, n) for state, n in pieces] for pieces in branches]
        sizes = [prefix + sum(kv.shape[3] for kv in pieces) for pieces in loaded]
        out = np.zeros((len(branches), scored), dtype=np.float64)
        for lo in range(0, len(branches), RANK_ROWS):
            group = list(range(lo, min(lo + RANK_ROWS, len(branches))))
            with SlotCache(self.model, max(sizes[g] for g in group) + len(tokens), len(group)) as side:
                for row, g in enumerate(group):
                    side.kv[:, :, row, :, :prefix] = self.kv[:, :, 0, :, :prefix]
                    at = prefix
                    for kv in loaded[g]:
                        side.kv[:, :, row, :, at:at + kv.shape[3]] = kv.to(side.kv.device, side.kv.dtype)
                        at += kv.shape[3]
                side.lengths = np.array([sizes[g] for g in group], dtype=np.int64)
                logits = side.forward(np.tile(tokens, (len(group), 1)), Logits.ALL)
                logits = logits.reshape(len(group), len(tokens), -1)
                for row, g in enumerate(group):
                    out[g] = self.model.log_probs_at(logits[row, len(tokens) - scored - 1:-1], tokens[-scored:])
        return out

    # -- memories ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Every row's kept slots as safetensors: ``kv`` ``[layers, 2, kv_heads, slots, head_dim]``
        with the rows' slots one after another (``row_lengths`` in the memory header)."""
        parts = [self.kv[:, :, b, :, :int(self.lengths[b])] for b in range(self.rows)]
        return save_tensors({"kv": torch.cat(parts, dim=3).contiguous().cpu()})

    def restore(self, state: bytes, offsets: np.ndarray, separators: np.ndarray) -> None:
        """Load a snapshot into row 0 (rows saved side by side become one row, in order)."""
        kv = read_kv(state, self.model.shape, len(offsets))
        n = len(offsets)
        if n > self.capacity:
            raise CommaError(f"the memory holds {n} tokens; this cache has room for {self.capacity}")
        self.kv[:, :, 0, :, :n] = kv.to(self.kv.device, self.kv.dtype)
        self.lengths[0] = n
        self._row_offsets[0] = np.asarray(offsets, dtype=np.int64)
        self._row_separators[0] = np.asarray(separators, dtype=bool)
