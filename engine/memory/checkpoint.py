"""Where a long read stands, saved every few thousand tokens, so that a read stopped by Cancel, a
crash or a restart goes on from there rather than from the start.

The answering model reads a 100-page manual in about half an hour on 2 cores; losing that to
a closed laptop lid is not acceptable. A checkpoint is a memory file (engine.memory.file_format's
layout, checked the same way) of the cache as it stood after a chunk. Its header adds how far
the read had got, which read it was (model, backend, document, policy, chunk: a checkpoint of
any other read is ignored and replaced), and how far the recall store had got; the partial
store itself stays beside it under a fixed name (not a ``.tmp`` name, which the library's
clean-up of crashed saves would remove). The reading loop, fed the same chunks from the same
cache, then produces the memory and store an uninterrupted read would have produced. Both
files go once the read's memory is saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import MemoryFileError
from engine.memory.file_format import STORE_PREAMBLE_BYTES as PREAMBLE_BYTES
from engine.memory.memory import Memory

CHECKPOINT_TOKENS = 4096


def partial_store(checkpoint: Path) -> Path:
    """Where the recall store of a resumable read is written until it is sealed."""
    return checkpoint.with_name(checkpoint.name + "-recall")


def identity(model, document, policy, chunk: int) -> dict:
    return {"model_fingerprint": model.fingerprint, "backend": model.backend, "document_sha256": document.sha256,
            "policy": policy.describe(), "chunk": chunk}


@dataclass
class Checkpoint:
    """A read's state after the chunk that ended at ``done``."""

    done: int
    cache: Memory  # the cache's slots, offsets, separators and KV
    store: dict | None  # StoreWriter.checkpoint()
    pieces: list[list[int]]  # RecallWriter's piece table so far
    passage_tokens: int


def save(path: Path, read_identity: dict, done: int, cache, writer) -> None:
    """Write the checkpoint of a read whose chunks up to ``done`` are in ``cache`` (atomically)."""
    state = {
        "done": done,
        "store": writer.store.checkpoint() if writer is not None else None,
        "pieces": [list(p) for p in writer.pieces] if writer is not None else [],
        "passage_tokens": writer.passage_tokens if writer is not None else 0,
    }
    header = {**read_identity, "kind": "checkpoint", "checkpoint": state, "kept_tokens": cache.length}
    offsets = cache.offsets.copy()
    Memory(header, np.zeros(len(offsets), dtype=np.int32), offsets, cache.separators.copy(), cache.snapshot()).save(path)


def load(path: Path, read_identity: dict, with_store: bool) -> Checkpoint | None:
    """The checkpoint of this very read, or None (no checkpoint, another read's, or damaged;
    ``with_store``: a read that keeps a recall store also needs its partial store, whole up to
    where the checkpoint says)."""
    if not path.is_file():
        return None
    try:
        memory = Memory.load(path, model_fingerprint=read_identity["model_fingerprint"],
                             backend=read_identity["backend"])
        header = memory.header
        if header.get("kind") != "checkpoint" or any(header.get(k) != v for k, v in read_identity.items()):
            return None
        state = header["checkpoint"]
        if with_store != (state["store"] is not None):
            return None
        if with_store and partial_store(path).stat().st_size < PREAMBLE_BYTES + int(state["store"]["offset"]):
            return None
        return Checkpoint(int(state["done"]), memory, state["store"], [list(map(int, p)) for p in state["pieces"]],
                          int(state["passage_tokens"]))
    except (MemoryFileError, OSError, KeyError, TypeError, ValueError, OverflowError):  # int(Infinity)
        return None


def remove(path: Path) -> None:
    """Delete a checkpoint and its partial store (a read that finished, or one begun again)."""
    path.unlink(missing_ok=True)
    partial_store(path).unlink(missing_ok=True)
