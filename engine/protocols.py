"""The engine contract: what a backend's model and cache offer to reading, answering, summaries
and scoring, written as typing Protocols so that the type checker holds both backends to it.

A backend provides a ``Model`` (weights, vocabulary, chat template; makes caches) and a
``Cache`` (one compacted KV cache: append, evict, snapshot, restore, a scratch branch). What a
backend can do beyond the contract (read chunks in parallel, choose chunks for a question) it
declares in ``Model.capabilities``; nothing outside the engine guesses it from a backend name.
Caches own native resources (a llama.cpp context, GPU memory) and free them in ``close()``, also
usable as a context manager; ``__del__`` is only the last resort.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

Progress = Callable[[int, int], None]  # done, total

T = TypeVar("T")


class Available(NamedTuple, Generic[T]):
    """Something that may be missing (a model, an index, a store) and, when it is, why: the
    sentence a person is shown about what answers do without it."""

    thing: T | None
    reason: str | None = None


class Logits(Enum):
    """Which positions' next-token logits a forward pass hands back."""

    NONE = "none"  # reading: no output projection at all
    LAST = "last"  # the last position's, as a 1-D host array of the vocabulary's size
    ALL = "all"  # every position's, as ``[n, vocab]`` (on the device for the torch backend)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the common contract."""

    parallel_reading: bool = False  # read independent chunks side by side (ParallelComp)
    chunk_choice: bool = False  # keep the chunks of a parallel memory that best predict a question
    recall: bool = False  # its caches are RecallCaches: passages' KV can be stored, ranked and loaded
    # Its caches are AttentionCaches: they tell how much attention an answer paid to each slot,
    # and an answer's sources are ordered by it.
    answer_attention: bool = False


@runtime_checkable
class Cache(Protocol):
    """One KV cache whose main sequence always holds positions ``0..length-1``."""

    n_ctx: int

    @property
    def length(self) -> int: ...

    @property
    def offsets(self) -> np.ndarray: ...  # the document offset of every document slot

    @property
    def separators(self) -> np.ndarray: ...  # whether each document slot is a separator

    def append(self, tokens: np.ndarray, offsets: np.ndarray, separators: np.ndarray,
               logits: Logits = Logits.NONE) -> Any: ...

    def evict(self, keep: np.ndarray) -> None: ...

    def truncate(self, length: int) -> None: ...

    def decode_main_tail(self, tokens: np.ndarray) -> np.ndarray: ...

    def snapshot(self) -> bytes: ...

    def restore(self, state: bytes, offsets: np.ndarray, separators: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Cache: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class RecallCache(Cache, Protocol):
    """A cache of a backend whose ``capabilities`` say ``recall``."""

    def export_slots(self, start: int, end: int) -> bytes: ...

    def import_slots(self, state: bytes, offsets: np.ndarray) -> None:
        """Append a stored passage at the end of the cache, at the positions that follow: right
        after the document slots it is one of them, after conversation tokens part of it."""

    def log_probs_after(self, branches: list[list[tuple[bytes, int]]], tokens: np.ndarray, scored: int,
                        prefix: int) -> np.ndarray: ...

    def remove(self, start: int, end: int) -> None:
        """Drop slots ``[start, end)`` and slide every later slot left into their place, its KV
        kept (re-rotated for its new position): an earlier turn's passages leave the
        conversation, and its text stays without being computed again."""


@runtime_checkable
class AttentionCache(Cache, Protocol):
    """A cache of a backend whose ``capabilities`` say ``answer_attention``."""

    def record_attention(self) -> None:
        """From now on, add up the attention every decoded token pays to each slot."""

    def attention_paid(self) -> np.ndarray:
        """The main sequence's attention per slot since ``record_attention``; recording stops."""


@runtime_checkable
class Model(Protocol):
    """A loaded model of one backend."""

    backend: str
    name: str
    path: Path
    n_vocab: int
    n_ctx_train: int
    n_layer: int
    bos: int
    derived_from: str | None  # for a faster copy of weights: the fingerprint of the original
    capabilities: Capabilities

    @property
    def fingerprint(self) -> str: ...

    @property
    def pieces(self) -> list[bytes]: ...

    @property
    def piece_lengths(self) -> np.ndarray: ...

    @property
    def separator_ids(self) -> np.ndarray: ...

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> np.ndarray: ...

    def detokenize(self, tokens: Any) -> bytes: ...  # the tokens' pieces, joined

    def apply_chat_template(self, messages: list[dict[str, str]], add_assistant: bool) -> str: ...

    def is_end_of_generation(self, token: int) -> bool: ...

    def new_cache(self, n_ctx: int, n_batch: int = 512) -> Cache: ...

    # Raises MemoryFileError unless a memory's KV state can hold ``n_tokens`` slots for this
    # model: called before a cache is sized from a memory file's slot count.
    def check_state(self, state: bytes, n_tokens: int) -> None: ...

    def log_probs_at(self, logits: Any, targets: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...  # free the weights; the model's caches are closed first
