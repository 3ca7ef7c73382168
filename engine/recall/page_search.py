"""Finding the pages a question needs, by its words and by its meaning: the one place that does.

The full-text index finds a page that shares the question's words; a question in a reader's own
words often shares none with the page that answers it (docs/design.md). So
every page is also cut into overlapping passages of ``PASSAGE_WORDS`` words whose sentence
vectors (``engine.recall.sentence_encoder``) the library keeps, and a page's meaning score is its best
passage's cosine with the question. The two rankings are merged by taking their pages in turn,
the full-text index's first: on bench/data/questions.json the gold page was among the first two
so merged for 52 of 52 questions, against 47 for the full-text index alone and 44 for meaning
alone (measured with the chunking below; 160 or 200 words, or no overlap, did worse).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.errors import Cancelled
from engine.recall.question_words import content_words

PASSAGE_WORDS = 120  # under the encoder's 256 tokens for most prose
PASSAGE_STRIDE = 80
_WORD = re.compile(r"\S+")


# Other tokens allowed between a question's content words for them to count as close together.
NEAR_TOKENS = 8


class PageIndex(Protocol):
    """What the library offers to search: its full-text index and its passage vectors."""

    def match_pages(self, doc_id: str, match: str, limit: int) -> list[tuple[int, float]]: ...

    def passage_vectors(self, doc_id: str, encoder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def words_query(question: str) -> str | None:
    """The full-text (FTS5) query for a question: any of its content words, each quoted (so
    nothing a person types is read as query syntax), or all of them close together; None when
    the question has no content word."""
    words = ['"' + w + '"' for w in dict.fromkeys(content_words(question))]
    if not words:
        return None
    # A page where all of them stand close together, as they do in the question, is what a
    # question in the document's own words points at; BM25 alone prefers the pages that
    # repeat its commonest word (bench/recall.py niah: an essay about San Francisco over the
    # one sentence that answers "the best thing to do in San Francisco").
    near = [f"NEAR({' '.join(words)}, {NEAR_TOKENS + len(words)})"] if len(words) > 1 else []
    return " OR ".join(words + near)


def word_pages(index: PageIndex, doc_id: str, question: str, limit: int) -> list[tuple[int, float]]:
    """Pages of one document that share the question's content words, best first, each with
    its BM25 relevance (over the stemmed page text; higher is more relevant)."""
    match = words_query(question)
    return index.match_pages(doc_id, match, limit) if match else []


def find_pages(index: PageIndex, encoder, encoder_name: str, doc_id: str, question: str,
               limit: int) -> tuple[list[tuple[int, float]], dict[int, tuple[int, int]]]:
    """The pages to answer ``question`` from, best first: the full-text index's and, where the
    document has its meaning index (and ``encoder`` is not None), the nearest in meaning, in
    turn; and for each page with a meaning index the ``(start, end)`` characters of its
    passage nearest the question."""
    words = word_pages(index, doc_id, question, limit)
    if encoder is None:
        return words, {}
    pages, spans, vectors = index.passage_vectors(doc_id, encoder_name)
    if not len(pages):
        return words, {}
    meaning = meaning_ranking(encoder.encode([question])[0], pages, vectors, len(pages))
    nearest = {page: (int(spans[row][0]), int(spans[row][1])) for page, _, row in meaning}
    return merge(words, meaning[:limit], limit), nearest


@dataclass(frozen=True)
class PagePassage:
    page: int
    start: int  # character offsets within the page's text
    end: int
    text: str


def passages(pages: Iterable[tuple[int, str]], words: int = PASSAGE_WORDS,
             stride: int = PASSAGE_STRIDE) -> list[PagePassage]:
    """Every page's text as overlapping runs of ``words`` words, ``stride`` apart; a page
    shorter than that is one passage, and a page without words none."""
    out = []
    for page, text in pages:
        spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        if not spans:
            continue
        last_start = max(len(spans) - words // 2, 1)
        for first in range(0, last_start, stride):
            last = min(first + words, len(spans)) - 1
            start, end = spans[first][0], spans[last][1]
            out.append(PagePassage(page, start, end, text[start:end]))
    return out


def meaning_ranking(question: np.ndarray, pages: np.ndarray, vectors: np.ndarray,
                    limit: int) -> list[tuple[int, float, int]]:
    """The ``limit`` pages whose best passage is nearest ``question`` (unit vectors; ``pages[i]``
    holds ``vectors[i]``), best first: ``(page, that passage's cosine, its row)``."""
    if len(pages) == 0:
        return []
    scores = vectors @ question
    best: dict[int, tuple[float, int]] = {}
    for row, (page, score) in enumerate(zip(pages.tolist(), scores.tolist(), strict=True)):
        if score > best.get(page, (-2.0, 0))[0]:
            best[page] = (score, row)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [(page, score, row) for page, (score, row) in ranked]


def merge(words: list[tuple[int, float]], meaning: list[tuple[int, float, int]],
          limit: int) -> list[tuple[int, float]]:
    """Pages from the two rankings in turn (words first), each once, with its place's score
    ``1 / (1 + place)``: the two rankings' own scores are not on one scale."""
    order: list[int] = []
    for i in range(max(len(words), len(meaning))):
        for ranking in (words, meaning):
            if i < len(ranking) and ranking[i][0] not in order:
                order.append(ranking[i][0])
    return [(page, 1.0 / (1 + place)) for place, page in enumerate(order[:limit])]


INDEX_BATCH = 64  # passages between two progress reports (a few seconds on 2 cores)


def index(encoder, pages: Iterable[tuple[int, str]], progress: Callable[[int, int], None] | None = None,
          cancelled: Callable[[], bool] | None = None) -> list[tuple[int, int, int, np.ndarray]]:
    """``(page, start, end, vector)`` for every passage of ``pages``, by ``encoder`` (an
    ``engine.recall.sentence_encoder.SentenceEncoder``); ``progress`` in passages."""
    found = passages(pages)
    out: list[tuple[int, int, int, np.ndarray]] = []
    for first in range(0, len(found), INDEX_BATCH):
        if cancelled is not None and cancelled():
            raise Cancelled("the meaning index was cancelled; the document can be asked by its words")
        part = found[first:first + INDEX_BATCH]
        vectors = encoder.encode([p.text for p in part])
        out.extend((p.page, p.start, p.end, v) for p, v in zip(part, vectors, strict=True))
        if progress is not None:
            progress(len(out), len(found))
    return out
