"""Reading: a document becomes a token stream, the stream goes through the cache under a
policy chunk by chunk, and what is left at the end becomes a Memory.

The loop is backend-neutral: it needs a cache with ``length``, ``separators``, ``append`` and
``evict``. A read also hands back the document's section notes (engine/reading/section_notes.py), what
a whole-document summary is made from, since the final memory alone only remembers the end in
detail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.errors import CommaError, MemoryFileError, stop_reading_if
from engine.memory import checkpoint as read_checkpoint
from engine.memory.memory import Memory
from engine.policy import Full, Policy
from engine.protocols import Cache, Logits, Model, Progress, RecallCache
from engine.reading.section_notes import Note, section_notes
from engine.reading.stream import DEFAULT_CHUNK, ReadResult, TokenStream, memory_header, token_stream
from engine.recall.store import RecallWriter


def cache_size(model: Model, policy: Policy, stream_len: int) -> int:
    """Cells a reading context needs; refuses a full-attention read longer than the model allows."""
    if isinstance(policy, Full):
        if stream_len > model.n_ctx_train:
            raise CommaError(
                f"the document is {stream_len} tokens long; with the 'full' policy it must fit the "
                f"model's {model.n_ctx_train}-token context. Use --policy sepllm or streaming"
            )
        return stream_len
    return policy.capacity


def prefill(cache: Cache, stream: TokenStream, policy: Policy, chunk: int, *,
            after_chunk: Callable[[int], None] | None = None,
            on_logits: Callable[[int, np.ndarray], None] | None = None,
            progress: Progress | None = None, cancelled: Callable[[], bool] | None = None, begin: int = 0) -> None:
    """Feed the stream through ``cache`` under ``policy``, chunk by chunk, from ``begin`` (a chunk
    boundary of a read resumed from its checkpoint) on.

    ``on_logits(start, logits)`` receives every position's logits when given (scoring);
    reading asks for none, which spares llama.cpp the output projection.
    """
    chunk = policy.max_chunk(chunk)
    total = len(stream)
    for start in range(begin, total, chunk):
        stop_reading_if(cancelled)
        end = min(start + chunk, total)
        keep = policy.keep(cache.separators, end - start)
        if keep is not None:
            cache.evict(keep)
        out = cache.append(stream.tokens[start:end], np.arange(start, end), stream.separators[start:end],
                           Logits.ALL if on_logits else Logits.NONE)
        if on_logits is not None:
            on_logits(start, out)
        if after_chunk is not None:
            after_chunk(end)
        if progress is not None:
            progress(end, total)


def read(model: Model, document, policy: Policy, *, notes: bool = True, chunk: int = DEFAULT_CHUNK,
         parallel: int | None = None, recall: Path | None = None, progress: Progress | None = None,
         cancelled: Callable[[], bool] | None = None, checkpoint: Path | None = None) -> ReadResult:
    """Read ``document`` once under ``policy``; the result's memory is ready to save.

    ``recall``: where the recall store goes (the KV of every passage, written as the read goes;
    backends whose ``capabilities`` say ``recall``). ``parallel``: read independent chunks of
    that many tokens side by side instead (``capabilities.parallel_reading``; no recall
    store). ``checkpoint``: save where the read stands there every
    CHECKPOINT_TOKENS, and go on from a checkpoint of this same read found there; the caller
    removes it (``read_checkpoint.remove``) once the memory is saved."""
    if parallel:
        if not model.capabilities.parallel_reading:
            raise CommaError(f"the {model.backend} engine cannot read in parallel chunks")
        # Imported here: it needs torch, which the gguf engine never loads.
        from engine.reading.parallel import read_parallel

        result = read_parallel(model, document, policy, parallel, progress=progress, cancelled=cancelled)
        if notes:
            result.notes = document_notes(model, token_stream(model, document))
        return result
    if recall is not None and not model.capabilities.recall:
        raise CommaError(f"the {model.backend} engine cannot keep a recall store; read with --no-recall")
    started = time.perf_counter()
    stream = token_stream(model, document)
    n_ctx = cache_size(model, policy, len(stream))
    chunk = policy.max_chunk(chunk)
    read_identity = read_checkpoint.identity(model, document, policy, chunk)
    resume = read_checkpoint.load(checkpoint, read_identity, recall is not None) if checkpoint is not None else None
    if resume is not None:
        try:
            model.check_state(resume.cache.state, resume.cache.kept_tokens)
        except MemoryFileError:
            resume = None
    if checkpoint is not None and resume is None:
        read_checkpoint.remove(checkpoint)  # another read's, or damaged: begin again
    with model.new_cache(n_ctx, chunk) as cache:
        if resume is not None:
            cache.restore(resume.cache.state, resume.cache.offsets, resume.cache.separators)
        hooks: list[Callable[[int], None]] = []
        writer = None
        if recall is not None:
            assert isinstance(cache, RecallCache)
            partial = read_checkpoint.partial_store(checkpoint) if checkpoint is not None else None
            writer = RecallWriter(cache, stream, recall, partial, resume)
            hooks.append(writer)
        saved_at = [resume.done if resume is not None else 0]
        if checkpoint is not None:
            def save_checkpoint(end: int) -> None:
                if end - saved_at[0] >= read_checkpoint.CHECKPOINT_TOKENS and end < len(stream):
                    read_checkpoint.save(checkpoint, read_identity, end, cache, writer)
                    saved_at[0] = end
            hooks.append(save_checkpoint)

        def after_chunk(end: int) -> None:
            for hook in hooks:
                hook(end)

        try:
            prefill(cache, stream, policy, chunk, after_chunk=after_chunk, progress=progress, cancelled=cancelled,
                    begin=resume.done if resume is not None else 0)
            header = memory_header(model, document, stream, policy, cache.length)
            memory = Memory(header, stream.tokens[cache.offsets], cache.offsets.copy(), cache.separators.copy(),
                            cache.snapshot())
            store = writer.seal(header) if writer is not None else None
        except BaseException:
            if writer is not None:
                # A checkpoint refers to the partial store: keep it for the read to go on.
                if checkpoint is not None and checkpoint.is_file():
                    writer.store.detach()
                else:
                    writer.store.discard()
            raise
    return ReadResult(memory, document_notes(model, stream) if notes else [], time.perf_counter() - started, store)


def document_notes(model: Model, stream: TokenStream) -> list[Note]:
    return section_notes(model, stream.tokens, stream.prompt_tokens, stream.page_of_token)
