"""Recall: the KV of every passage, kept from the one read, and the choice of the passages a
question needs.

The separator memory keeps a document's gist and its last window; the sentence on page 3 is
gone from it. So while a document is read, every chunk's KV also goes to a **recall store** on
disk the moment it is computed, cut at page starts into pieces; the consecutive pieces of one
page form a passage of at most ``PASSAGE_TOKENS`` tokens. Nothing is read twice.

At question time the caller names candidate pages (the library's full-text index finds them);
each of their passages is placed after the memory on its own branch of the cache and scored by
the log-likelihood of the question that follows it, all branches in one batch (ParallelComp's
chunk choice, with the passage's KV loaded rather than recomputed). The best passages, in
document order, are then loaded after the memory for the answer, and cited as its sources.
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import MemoryFileError
from engine.memory_file import StoreFile, StoreWriter, open_store
from engine.protocols import Model, RecallCache

PASSAGE_TOKENS = 1024
# The most passages an answer is given (about a page each). The bundled 135M model answered a
# needle from 1 or 2 passages and lost it among 3 (bench/recall.py, 8K haystack, depths 10 and 20%).
MAX_PASSAGES = 2
CANDIDATE_PAGES = 8  # pages the full-text index proposes for ranking
SCORED_TOKENS = 48  # the question's tokens whose likelihood ranks a passage (its start if longer)
# How candidates become an answer's passages (engine.conversation.RANKINGS):
# - "words": the candidate pages' order (the full-text index's and the meaning index's, in turn)
#   chooses the passages and orders their citations;
# - "likelihood": every candidate's passages ranked by the question's likelihood after each
#   (ParallelComp's choice);
# - "rerank": the first RERANK_POOL passages in the candidates' order, ranked by that likelihood.
# Over the 52 questions of bench/data (bench/recall.py qa, the bundled model), ranking pools of
# 2, 3, 4, 5, 6 and 8 passages kept the gold page among the chosen for 98.1, 96.2, 94.2, 96.2,
# 96.2 and 94.2% of questions, and put it first for 86.5, 84.6, 84.6, 82.7, 80.8 and 78.8%
# (the candidates' order: 98.1 and 80.8%). So the likelihood orders the passages the candidates
# chose and does not choose them.
DEFAULT_RANKING = "rerank"
# The answering model (1.5B parameters) took 1.1 s to rank two passages where the bundled model
# took 0.21 s (bench/recall.py ranking), on a first token that already misses its 3 s: it keeps
# the candidates' order.
ANSWERING_RANKING = "words"
RERANK_POOL = MAX_PASSAGES
RANK_GROUP = 4  # candidates whose KV is read from the store and held at once while ranking
QUESTION_LEAD = "\nQuestion:"
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


@dataclass(frozen=True)
class Source:
    """A passage an answer was given, with how well it predicted the question."""

    page: int
    # How relevant the passage is, higher is more: the full-text index's BM25 relevance of its page
    # (ranking "words"), the mean log-probability of the question's tokens after it ("likelihood",
    # "rerank"), or on a backend that reports attention, its share of the answer's attention.
    score: float
    text: str  # its opening words

    def as_json(self) -> dict:
        return {"page": self.page, "score": round(self.score, 4), "text": self.text}


class RecallWriter:
    """Called after each chunk of a read: stores the KV of the chunk's document tokens, page by
    page, before eviction can drop it."""

    def __init__(self, cache: RecallCache, stream, path: Path, partial: Path | None = None, resume=None):
        """``partial``: write the store there until it is sealed (a resumable read);
        ``resume``: the read's ``engine.read_checkpoint.Checkpoint`` to go on from."""
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
            page = self.stream.page_of(lo)
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
    """A recall store opened for the memory it belongs to; passages are read only when asked for."""

    def __init__(self, file: StoreFile, memory_header: dict):
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
        ids = [p[3] for p in pieces]
        # Pieces tile the document's tokens in order, so none can claim more tokens (and the
        # arrays sized from them) than the store's token section holds.
        end = self.prompt_tokens + file.sections["tokens"][1] // 4
        starts = [first for first, _, _, _ in pieces] + [end]
        if ids != sorted(ids) or (ids and (ids[0] != 0 or ids[-1] != len(set(ids)) - 1)) \
                or any(first < self.prompt_tokens or n <= 0 or first + n > nxt or page < 1
                       for (first, n, page, _), nxt in zip(pieces, starts[1:], strict=True)):
            raise damaged
        grouped: dict[int, list[int]] = {}
        for i, piece in enumerate(pieces):
            grouped.setdefault(piece[3], []).append(i)
        self.pieces = pieces
        # Passage ids run 0..n-1 (checked above), so a passage's index is its place in this list.
        self.passages = [
            Passage(index, pieces[members[0]][2], pieces[members[0]][0], sum(pieces[i][1] for i in members),
                    tuple(members))
            for index, members in sorted(grouped.items())
        ]
        self._tokens: np.ndarray | None = None

    @classmethod
    def open(cls, path: Path, model: Model, memory_header: dict) -> RecallStore:
        return cls(open_store(path, model_fingerprint=model.fingerprint, backend=model.backend), memory_header)

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
        if self._tokens is None:
            self._tokens = np.frombuffer(self.file.read(["tokens"])["tokens"], dtype="<i4")
        start = passage.first - self.prompt_tokens
        ids = self._tokens[start:start + min(passage.tokens, 8 * words)]
        return snippet(model.detokenize(ids).decode("utf-8", errors="replace"), words)


def snippet(text: str, words: int = SNIPPET_WORDS) -> str:
    """The opening words of a passage, as sources show it."""
    split = text.split()
    return " ".join(split[:words]) + (" …" if len(split) > words else "")


def question_tokens(model: Model, question: str) -> tuple[np.ndarray, int]:
    """The tokens that follow a passage when it is ranked, and how many of them (the question's,
    up to SCORED_TOKENS) are scored. Lead and question are tokenized as one text, so the
    question's first word keeps the form it has after a space."""
    lead = len(model.tokenize(QUESTION_LEAD))
    tokens = model.tokenize(f"{QUESTION_LEAD} {question.strip()}")[:lead + SCORED_TOKENS]
    return tokens.astype(np.int32), max(0, len(tokens) - lead)


def rank(cache: RecallCache, model: Model, store: RecallStore, candidates: list[Passage], question: str,
         prefix: int) -> list[tuple[Passage, float]]:
    """Candidates with the mean log-probability of the question after each, alone after the
    cache's first ``prefix`` slots (the memory's attention sinks), as ParallelComp ranks its
    chunks; best first."""
    tokens, scored = question_tokens(model, question)
    if scored == 0 or not candidates:
        return []
    scores: list[float] = []
    for lo in range(0, len(candidates), RANK_GROUP):
        group = candidates[lo:lo + RANK_GROUP]
        log_probs = cache.log_probs_after([store.states(p) for p in group], tokens, scored, prefix)
        scores += log_probs.mean(axis=1).tolist()
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].index))
    return [(candidates[i], scores[i]) for i in order]


def choose(ranked: list[tuple[Passage, float]], budget: int, limit: int = MAX_PASSAGES) -> list[tuple[Passage, float]]:
    """The best passages that fit ``budget`` tokens, at most ``limit``, best first."""
    chosen: list[tuple[Passage, float]] = []
    used = 0
    for passage, score in ranked:
        if len(chosen) == limit:
            break
        if used + passage.tokens <= budget:
            chosen.append((passage, score))
            used += passage.tokens
    return chosen


def sink_slots(offsets: np.ndarray, prompt_tokens: int) -> int:
    """How many of a memory's first slots still sit at their read positions (the prompt's start,
    which every policy keeps as attention sinks): ranked passages follow them unshifted."""
    head = np.asarray(offsets[:prompt_tokens])
    same = head == np.arange(len(head))
    return int(len(head) if same.all() else np.argmin(same))


def ranking_room(passages: int = RANK_GROUP) -> int:
    """Cache slots kept free for ranking ``passages`` side by side beyond the memory: four
    candidates while the conversation is short (the cache ranks as many at a time as its free
    cells hold; on this CPU one at a time costs about the same as eight in a batch)."""
    return passages * (PASSAGE_TOKENS + SCORED_TOKENS + 8)
