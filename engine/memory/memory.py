"""A Memory: what reading a document under a policy leaves behind, and how it maps to pages.

It holds the kept KV state (the backend's bytes), for every kept slot its token id, its offset
in the read token stream and whether it is a separator, and a header that says which model,
backend, policy and document made it. Saving and verified loading go through
``engine.memory.file_format``, the one implementation of the file format; ``engine.memory.schema``
says what a loaded header and its sections must hold.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.memory.file_format import pack_offsets, read_memory, unpack_offsets, write_memory
from engine.memory.schema import check_memory


def page_of_token(page_token_starts: list[int], prompt_tokens: int, offset: int) -> int | None:
    """1-based page of a token-stream offset; None for the prompt before the document."""
    if offset < prompt_tokens:
        return None
    return bisect_right(page_token_starts, int(offset))


@dataclass
class Memory:
    header: dict
    token_ids: np.ndarray
    offsets: np.ndarray
    separators: np.ndarray
    state: bytes

    @property
    def parallel(self) -> bool:
        """Whether it was read as independent chunks side by side (its header lists them)."""
        return "chunks" in self.header

    @property
    def kept_tokens(self) -> int:
        return len(self.offsets)

    def pages(self, slots: np.ndarray | None = None) -> list[int]:
        """The pages that the given kept slots (all by default) came from, ascending."""
        offsets = self.offsets if slots is None else self.offsets[slots]
        starts, prompt = self.header["page_token_starts"], self.header["prompt_tokens"]
        pages = {page_of_token(starts, prompt, o) for o in offsets.tolist()}
        return sorted(p for p in pages if p is not None)

    def save(self, path: Path) -> int:
        return write_memory(path, self.header, {
            "token_ids": self.token_ids.astype("<i4").tobytes(),
            "offsets": pack_offsets(self.offsets),
            "separators": self.separators.astype(np.uint8).tobytes(),
            "state": self.state,
        })

    @classmethod
    def load_for(cls, model, path: Path) -> Memory:
        """``load`` for ``model``, whose backend also checks that the KV state holds the slots
        the header claims: what a cache is then sized from."""
        memory = cls.load(path, model_fingerprint=model.fingerprint, backend=model.backend, n_vocab=model.n_vocab)
        model.check_state(memory.state, memory.kept_tokens)
        return memory

    @classmethod
    def load(cls, path: Path, *, model_fingerprint: str, backend: str, n_vocab: int | None = None) -> Memory:
        """A verified memory file whose header and sections say what a memory must (see
        ``engine.memory.schema``; ``n_vocab``: the model's vocabulary, which holds every token id);
        its KV state is checked by the cache it is restored into."""
        f = read_memory(path, model_fingerprint=model_fingerprint, backend=backend)
        check_memory(path, f.header, f.sections, n_vocab)
        s = f.sections
        return cls(
            header=f.header,
            token_ids=np.frombuffer(s["token_ids"], dtype="<i4").copy(),
            offsets=unpack_offsets(s["offsets"]),
            separators=np.frombuffer(s["separators"], dtype=np.uint8).astype(bool),
            state=s["state"],
        )
