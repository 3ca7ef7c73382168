"""Parallel chunks (ParallelComp): a document read as many independent chunks in one batch.

The document is cut into chunks of ``chunk_tokens``; each becomes one row of the cache, with
the reading prompt in front so every row has the same attention sinks, and all rows are read
side by side under the policy, each evicting on its own separators. Positions are reused:
every row's slots start at 0, so the batch needs no more positions than one chunk, and the GPU
does one large forward pass per step instead of many small ones.

The result is one compressed memory per chunk. The memory file keeps them in document order
(``chunks`` in the header gives each one's slot count); the prompt's slots are kept once, in
the first chunk, since every row computed the very same ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from safetensors.torch import save as save_tensors

from engine.backends.torch.cache import read_kv
from engine.errors import CommaError, stop_reading_if
from engine.memory.memory import Memory
from engine.policy import Policy
from engine.protocols import Logits, Progress
from engine.reading.stream import DEFAULT_CHUNK, ReadResult, TokenStream, memory_header, token_stream


def chunk_rows(stream_len: int, prompt: int, chunk_tokens: int) -> list[np.ndarray]:
    """Stream offsets of each row: the prompt, then that row's chunk of the document."""
    head = np.arange(prompt)
    starts = range(prompt, stream_len, chunk_tokens)
    return [np.concatenate([head, np.arange(s, min(s + chunk_tokens, stream_len))]) for s in starts]


def prefill_rows(model, stream: TokenStream, policy: Policy, rows: list[np.ndarray], chunk: int = DEFAULT_CHUNK,
                 progress: Progress | None = None, cancelled: Callable[[], bool] | None = None):
    """Read each row (stream offsets) side by side under ``policy``; returns the cache."""
    step = policy.max_chunk(chunk)
    longest = max(len(r) for r in rows)
    # A policy's capacity leaves room for a row's own incoming tokens; the padding of rows
    # shorter than the step needs room too.
    capacity = min(policy.capacity, longest) if policy.capacity else longest
    cache = model.new_cache(capacity + step, rows=len(rows))
    total = sum(len(r) for r in rows)
    done = 0
    for start in range(0, longest, step):
        stop_reading_if(cancelled)
        pieces = [r[start:start + step] for r in rows]
        valid = np.array([len(p) for p in pieces])
        keeps = [policy.keep(cache.row(b)[1], int(v)) if v else None for b, v in enumerate(valid)]
        if any(k is not None for k in keeps):
            cache.evict_rows(keeps)
        offsets = np.zeros((len(rows), int(valid.max())), dtype=np.int64)
        for b, p in enumerate(pieces):
            offsets[b, :len(p)] = p
        cache.append_rows(stream.tokens[offsets], offsets, stream.separators[offsets], valid)
        done += int(valid.sum())
        if progress is not None:
            progress(done, total)
    return cache


def read_parallel(model, document, policy: Policy, chunk_tokens: int, *, chunk: int = DEFAULT_CHUNK,
                  progress: Progress | None = None, cancelled: Callable[[], bool] | None = None) -> ReadResult:
    started = time.perf_counter()
    stream = token_stream(model, document)
    rows = chunk_rows(len(stream), stream.prompt_tokens, chunk_tokens)
    if not rows:
        raise CommaError("the document has no text to read")
    cache = prefill_rows(model, stream, policy, rows, chunk, progress, cancelled)
    # Every row computed the prompt's slots identically; keep them once, in the first chunk.
    cache.evict_rows([None] + [np.flatnonzero(cache.row(b)[0] >= stream.prompt_tokens)
                               for b in range(1, len(rows))])
    offsets = np.concatenate([cache.row(b)[0] for b in range(len(rows))])
    separators = np.concatenate([cache.row(b)[1] for b in range(len(rows))])
    header = {**memory_header(model, document, stream, policy, len(offsets)),
              "parallel_chunk_tokens": chunk_tokens, "chunks": [int(n) for n in cache.lengths]}
    memory = Memory(header, stream.tokens[offsets], offsets, separators, cache.snapshot())
    return ReadResult(memory, [], time.perf_counter() - started)


def chunk_bounds(memory: Memory) -> np.ndarray:
    """Slot index where each chunk of a parallel memory starts, plus the end."""
    return np.cumsum([0, *memory.header["chunks"]])


def select_chunks(model, memory: Memory, question: str, budget: int) -> Memory:
    """The chunks most relevant to ``question`` that fit ``budget`` slots, in document order.

    A parallel memory can hold far more slots than the model was trained to attend over, so
    before answering, every chunk is scored by how well it predicts the question (ParallelComp
    ranks chunks by what the query sees in each): the question follows each chunk in its own
    row of one batch, and the chunks whose rows give the question the lowest loss are kept,
    the first chunk (it holds the reading prompt) always.
    """
    bounds = chunk_bounds(memory)
    sizes = np.diff(bounds)
    if bounds[-1] <= budget:
        return memory
    tokens = model.tokenize(question)
    if len(tokens) < 2:
        tokens = model.tokenize(f"Question: {question}")
    kv = read_kv(memory.state, model.shape, int(bounds[-1]))
    cache = model.new_cache(int(sizes.max()) + len(tokens), rows=len(sizes))
    cache.restore_rows(kv, sizes)
    logits = cache.forward(np.tile(tokens, (len(sizes), 1)), Logits.ALL)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2),
        torch.as_tensor(tokens[1:].astype(np.int64), device=logits.device).expand(len(sizes), -1),
        reduction="none").mean(dim=1).cpu().numpy()
    chosen, used = [0], int(sizes[0])
    for chunk in np.argsort(loss).tolist():
        if chunk != 0 and used + sizes[chunk] <= budget:
            chosen.append(chunk)
            used += int(sizes[chunk])
    chosen.sort()
    slots = np.concatenate([np.arange(bounds[c], bounds[c + 1]) for c in chosen])
    header = {**memory.header, "chunks": [int(sizes[c]) for c in chosen], "kept_tokens": len(slots),
              "selected_chunks": chosen}
    state = save_tensors({"kv": kv.index_select(3, torch.as_tensor(slots)).contiguous()})
    return Memory(header, memory.token_ids[slots], memory.offsets[slots], memory.separators[slots], state)
