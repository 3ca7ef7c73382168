"""The recall store: the KV of every passage, kept from the one read.

The separator memory keeps a document's gist and its last window; the sentence on page 3 is
gone from it. So while a document is read, every chunk's KV also goes to a **recall store** on
disk the moment it is computed, cut at page starts into pieces; the consecutive pieces of one
page form a passage of at most ``PASSAGE_TOKENS`` tokens. Nothing is read twice.

At question time only the passages a question needs are read back (``engine.recall.ranking``
chooses them).
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import MemoryFileError
from engine.memory.file_format import StoreFile, StoreWriter, open_store
from engine.memory.memory import page_of_token
from engine.protocols import Model, RecallCache

PASSAGE_TOKENS = 1024
SNIPPET_WORDS = 14


def new_read_id() -> str:
    """Ties a memory and the recall store written by the same read to each other."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Passage:
    index: int
    page: int
    first: int  # offset of its first token in the read token stream
    tokens: int
    pieces: tuple[int, ...]


class RecallWriter:
    """Called after each chunk of a read: stores the KV of the chunk's document tokens, page by
    page, before eviction can drop it."""

    def __init__(self, cache: RecallCache, stream, path: Path, partial: Path | None = None, resume=None):
        """``partial``: write the store there until it is sealed (a resumable read);
        ``resume``: the read's ``engine.memory.checkpoint.Checkpoint`` to go on from."""
        self.cache, self.stream = cache, stream
        self.store = StoreWriter(path, partial, resume.store if resume is not None else None)
        self.pieces: list[list[int]] = resume.pieces if resume is not None else []  # [first offset, tokens, page, passage]
        self.done = resume.done if resume is not None else 0
        self.passage_tokens = resume.passage_tokens if resume is not None else 0

    def __call__(self, end: int) -> None:
        start, self.done = self.done, end
        first_slot = self.cache.length - (end - start)
        starts = self.stream.page_token_starts
        lo = max(start, self.stream.prompt_tokens)
        while lo < end:
            page = self.stream.page_of_token(lo)
            following = bisect_right(starts, lo)
            hi = min(end, starts[following]) if following < len(starts) else end
            self._add(lo, hi, page, first_slot + lo - start)
            lo = hi

    def _add(self, lo: int, hi: int, page: int, slot: int) -> None:
        passage = 0
        if self.pieces:
            last = self.pieces[-1]
            passage = last[3]
            if last[2] != page or self.passage_tokens + hi - lo > PASSAGE_TOKENS:
                passage += 1
                self.passage_tokens = 0
        self.passage_tokens += hi - lo
        self.store.add(f"piece{len(self.pieces)}", self.cache.export_slots(slot, slot + hi - lo))
        self.pieces.append([lo, hi - lo, page, passage])

    def seal(self, header: dict) -> StoreWriter:
        """Finish the store beside its memory's ``header``; the caller commits it once the memory is saved."""
        prompt = self.stream.prompt_tokens
        self.store.add("tokens", self.stream.tokens[prompt:].astype("<i4").tobytes())
        self.store.seal({
            "kind": "recall", "pieces": self.pieces,
            **{k: header[k] for k in ("model_fingerprint", "model_name", "backend", "document_sha256",
                                      "read_id", "prompt_tokens")},
        })
        return self.store


class RecallStore:
    """A recall store opened for the memory it belongs to; passages are read only when asked for.

    A store's header checksum catches accidents, not intent, so everything a question will trust
    is checked here first: its passage table tiles the memory's read in order, each piece on the
    page the memory says its tokens are on, and every stored token id is one the model has."""

    def __init__(self, file: StoreFile, memory_header: dict, n_vocab: int):
        header = file.header
        if header.get("read_id") != memory_header.get("read_id") or \
                header.get("document_sha256") != memory_header.get("document_sha256"):
            raise MemoryFileError(f"recall store {file.path} belongs to another reading of this document")
        self.file = file
        damaged = MemoryFileError(f"recall store {file.path} is damaged (unreadable passage table)")
        try:
            self.prompt_tokens = int(header["prompt_tokens"])
            pieces = [(int(first), int(n), int(page), int(passage)) for first, n, page, passage in header["pieces"]]
        # JSON allows Infinity, which int() refuses with OverflowError.
        except (KeyError, TypeError, ValueError, OverflowError):
            raise damaged from None
        names = {f"piece{i}" for i in range(len(pieces))} | {"tokens"}
        if set(file.sections) != names:
            raise damaged
        # The store holds the very tokens its memory read after the prompt, no more, no fewer.
        document_tokens = memory_header["document_tokens"]
        if self.prompt_tokens != memory_header["prompt_tokens"] or file.sections["tokens"][1] != 4 * document_tokens:
            raise damaged
        ids = [p[3] for p in pieces]
        # Pieces tile the document's tokens in order, so none can claim more tokens (and the
        # arrays sized from them) than the store's token section holds.
        end = self.prompt_tokens + document_tokens
        starts = [first for first, _, _, _ in pieces] + [end]
        if ids != sorted(ids) or (ids and (ids[0] != 0 or ids[-1] != len(set(ids)) - 1)) \
                or any(first < self.prompt_tokens or n <= 0 or first + n > nxt or page < 1
                       for (first, n, page, _), nxt in zip(pieces, starts[1:], strict=True)):
            raise damaged
        # A piece is cut at page starts, so its first and last tokens lie on the page it names:
        # the page a source cites.
        page_starts = memory_header["page_token_starts"]
        if any(page_of_token(page_starts, self.prompt_tokens, first) != page or
               page_of_token(page_starts, self.prompt_tokens, first + n - 1) != page for first, n, page, _ in pieces):
            raise damaged
        grouped: dict[int, list[int]] = {}
        for i, piece in enumerate(pieces):
            grouped.setdefault(piece[3], []).append(i)
        if any(pieces[i][2] != pieces[members[0]][2] for members in grouped.values() for i in members):
            raise damaged  # a passage lies on one page
        self.pieces = pieces
        # Passage ids run 0..n-1 (checked above), so a passage's index is its place in this list.
        self.passages = [
            Passage(index, pieces[members[0]][2], pieces[members[0]][0], sum(pieces[i][1] for i in members),
                    tuple(members))
            for index, members in sorted(grouped.items())
        ]
        self._tokens = np.frombuffer(file.read(["tokens"])["tokens"], dtype="<i4")
        if self._tokens.size and (self._tokens.min() < 0 or self._tokens.max() >= n_vocab):
            raise MemoryFileError(f"recall store {file.path} is damaged (token ids outside the model's "
                                  f"vocabulary of {n_vocab} tokens)")

    @classmethod
    def open(cls, path: Path, model: Model, memory_header: dict) -> RecallStore:
        return cls(open_store(path, model_fingerprint=model.fingerprint, backend=model.backend), memory_header,
                   model.n_vocab)

    def on_pages(self, pages: list[int]) -> list[Passage]:
        wanted = set(pages)
        return [p for p in self.passages if p.page in wanted]

    def states(self, passage: Passage) -> list[tuple[bytes, int]]:
        """The passage's pieces as ``(KV state, tokens)``, each verified against its checksum."""
        names = [f"piece{i}" for i in passage.pieces]
        blobs = self.file.read(names)
        return [(blobs[name], self.pieces[i][1]) for name, i in zip(names, passage.pieces, strict=True)]

    def piece_offsets(self, passage: Passage) -> list[np.ndarray]:
        """The read-stream offsets of each of the passage's pieces (their pages follow from them)."""
        return [np.arange(self.pieces[i][0], self.pieces[i][0] + self.pieces[i][1]) for i in passage.pieces]

    def text(self, passage: Passage, model: Model, words: int = SNIPPET_WORDS) -> str:
        """The passage's opening words, as the reader saw them."""
        start = passage.first - self.prompt_tokens
        ids = self._tokens[start:start + min(passage.tokens, 8 * words)]
        return snippet(model.detokenize(ids).decode("utf-8", errors="replace"), words)


def snippet(text: str, words: int = SNIPPET_WORDS) -> str:
    """The opening words of a passage, as sources show it."""
    split = text.split()
    return " ".join(split[:words]) + (" …" if len(split) > words else "")
