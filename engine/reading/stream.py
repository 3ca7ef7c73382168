"""What a read works on and hands back: the document as a token stream with its page map, and
the result (a Memory, the section notes, the sealed recall store). Sequential reading
(``engine.reading.reader``) and parallel chunks (``engine.reading.parallel``) share them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.memory.file_format import StoreWriter
from engine.memory.memory import Memory, page_of_token
from engine.policy import Policy
from engine.prompts import document_prefix
from engine.protocols import Model
from engine.reading.section_notes import Note
from engine.recall.store import new_read_id

DEFAULT_CHUNK = 512


@dataclass
class TokenStream:
    """What is read: the prompt prefix, then the document, with a token → page map."""

    tokens: np.ndarray
    separators: np.ndarray
    prompt_tokens: int
    page_token_starts: list[int]

    def __len__(self) -> int:
        return len(self.tokens)

    def page_of_token(self, offset: int) -> int | None:
        return page_of_token(self.page_token_starts, self.prompt_tokens, offset)


@dataclass
class ReadResult:
    memory: Memory
    notes: list[Note] = field(default_factory=list)
    seconds: float = 0.0
    # The sealed recall store, still at a temporary name: ``commit()`` it once the memory is
    # saved (a failure in between then leaves the previous memory and store as they were), or
    # ``discard()`` it.
    recall: StoreWriter | None = None


def token_stream(model: Model, document, with_prompt: bool = True) -> TokenStream:
    prefix = model.tokenize(document_prefix(model), special=True, add_bos=True) if with_prompt else \
        np.zeros(0, dtype=np.int32)
    body = model.tokenize(document.text)
    # Byte offset where each document token starts; pages are char ranges of the same text.
    token_bytes = np.concatenate([[0], np.cumsum(model.piece_lengths[body])[:-1]])
    char_to_byte = np.concatenate([[0], np.cumsum([len(ch.encode()) for ch in document.text])])
    page_bytes = char_to_byte[np.minimum(list(document.page_starts), len(document.text))]
    page_token_starts = (np.searchsorted(token_bytes, page_bytes, side="left") + len(prefix)).tolist()
    tokens = np.concatenate([prefix, body]).astype(np.int32)
    return TokenStream(tokens, model.separator_ids[tokens], len(prefix), page_token_starts)


def memory_header(model: Model, document, stream: TokenStream, policy: Policy, kept_tokens: int) -> dict:
    """What a memory file says about where it came from: model, backend, policy, document, pages,
    and the id of the read, which its recall store carries too."""
    return {
        "read_id": new_read_id(),
        "model_fingerprint": model.fingerprint,
        "model_name": model.name,
        "backend": model.backend,
        "policy": policy.describe(),
        "document_sha256": document.sha256,
        "document_tokens": len(stream) - stream.prompt_tokens,
        "prompt_tokens": stream.prompt_tokens,
        "page_token_starts": stream.page_token_starts,
        "kept_tokens": kept_tokens,
    }
