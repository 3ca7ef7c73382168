"""Finding what a question needs, by its words and by its meaning: the one place that does.

The full-text index finds a page that shares the question's words; a question in a reader's own
words often shares none with the page that answers it (docs/design.md). So every page is also
cut into overlapping passages of ``PASSAGE_WORDS`` words whose sentence vectors
(``engine.recall.sentence_encoder``) the library keeps.

Two answers come out, both fusing the two kinds of evidence by reciprocal rank (RRF: a sum of
``1 / (k + place)`` over the rankings, which needs no common scale):
- the **pages**, best first: the full-text index's BM25 ranking fused with the pages' ranking by
  their best passage's cosine; they order an answer's citations and, after the deep read, name
  the recall store's candidates;
- the **passages**, best first: every passage ranked by its cosine, fused with its ranking by the
  question's words it holds (each weighed by how rare it is among the document's passages); the
  spot reading spends its budget on them (``engine.recall.spot_reading``).
The constants were chosen on the dev part of bench/data/heldout (bench/heldout.py, condition
``pages``; bench/README.md has the figures), and checked on bench/data/questions.json.
"""

from __future__ import annotations

import re
from collections import Counter
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


# RRF's constants, chosen on the dev part (bench/heldout.py --conditions pages): for pages, 1 put
# the gold page first for 88% of the questions in the document's words where 5 did for 83% (the
# rankings are short); for passages, 5 and 1 read an answer for as many questions, 60 for fewer.
PAGE_FUSION = 1
PASSAGE_FUSION = 5
# Words match by their first letters, so that "sorted" finds "sort" and "vectors" "vector".
PREFIX = 5


class PageIndex(Protocol):
    """What the library offers to search: its full-text index, its page text and its passage vectors."""

    def match_pages(self, doc_id: str, match: str, limit: int) -> list[tuple[int, float]]: ...

    def page_texts(self, doc_id: str) -> list[str]: ...

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


@dataclass(frozen=True)
class Found:
    """What a question needs from one document, best first: pages ``(page, fused score)`` and
    passages ``(passage, fused score)``."""

    pages: list[tuple[int, float]]
    passages: list[tuple[PagePassage, float]]


def find_pages(index: PageIndex, encoder, encoder_name: str, doc_id: str, question: str, limit: int) -> Found:
    """The pages and passages to answer ``question`` from. Without the document's meaning index
    (or without ``encoder``), the pages are the full-text index's and the passages are those
    of its pages, ranked by the question's words they hold."""
    words = word_pages(index, doc_id, question, limit)
    texts = index.page_texts(doc_id)
    if encoder is not None:
        pages, spans, vectors = index.passage_vectors(doc_id, encoder_name)
    if encoder is None or not len(pages):
        found = passages((page, texts[page - 1]) for page, _ in words if 0 < page <= len(texts))
        return Found(words, fuse([word_ranking(question, found)], PASSAGE_FUSION, found))
    question_vector = encoder.encode([question])[0]
    meaning = meaning_ranking(question_vector, pages, vectors, len(pages))
    by_page = fuse([[page for page, _ in words], [page for page, _, _ in meaning[:limit]]], PAGE_FUSION)[:limit]
    every = [PagePassage(page, start, end, texts[page - 1][start:end] if 0 < page <= len(texts) else "")
             for page, (start, end) in zip(pages.tolist(), spans.tolist(), strict=True)]
    cosine = np.argsort(-(vectors @ question_vector), kind="stable").tolist()
    return Found(by_page, fuse([cosine, word_ranking(question, every)], PASSAGE_FUSION, every))


def combine(searches: list[Found]) -> Found:
    """Several searches' findings as one, each ranking fused by reciprocal rank; on a tie the
    earlier search's comes first."""
    pages = fuse([[page for page, _ in found.pages] for found in searches], PAGE_FUSION)
    passages = fuse([[passage for passage, _ in found.passages] for found in searches], PASSAGE_FUSION)
    return Found(pages, passages)


def word_ranking(question: str, found: list[PagePassage]) -> list[int]:
    """Indexes of the passages that hold any of the question's content words, best first: by the
    sum of each such word's inverse document frequency among ``found`` (a rare word says more)."""
    wanted = {w[:PREFIX] for w in content_words(question)}
    held = [wanted & {w[:PREFIX] for w in content_words(p.text)} for p in found]
    counts = Counter(word for words in held for word in words)
    weight = {word: np.log((len(found) + 1) / (n + 0.5)) for word, n in counts.items()}
    scores = [sum(weight[w] for w in words) for words in held]
    return sorted((i for i, score in enumerate(scores) if score > 0), key=lambda i: (-scores[i], i))


def fuse(rankings: list[list], k: int, items: list | None = None) -> list[tuple]:
    """Reciprocal-rank fusion of ``rankings`` (each best first): ``(item, score)`` best first,
    ties in first-seen order; with ``items``, the rankings hold indexes into it."""
    scores: dict = {}
    for ranking in rankings:
        for place, key in enumerate(ranking):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + 1 + place)
    order = sorted(scores, key=lambda key: -scores[key])  # sorted() is stable: ties keep first-seen order
    return [(items[key] if items is not None else key, scores[key]) for key in order]


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
