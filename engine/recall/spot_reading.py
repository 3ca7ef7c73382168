"""Reading, on the spot, the pages a question needs, for a model that has not read the document.

The answering model reads a document in the background at a tenth of the small model's speed
(docs/design.md); until it is done, a question is still answered by it, from the
pages found for the question (by its words and by meaning), read there and then with full
attention: the best two, each cut to the stretch that holds the passage nearest the question in
meaning and most of the question's words.
The pages become a document of their own whose other pages are empty, so the memory's page map
(and so every citation) keeps the real page numbers. The read is bounded by ``SPOT_TOKENS``:
on a 2-core CPU the answering model reads about 40 tokens/s, so that bound is what keeps the
first token near 20 seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from engine.documents.document import Document
from engine.recall.question_words import content_words

SPOT_TOKENS = 768
# The budget is shared by the best two pages: on bench/data/questions.json the first page found
# (engine/recall/page_search.py) is the gold page for 81% of the questions (62% of those in a reader's
# words), the first two for 98% (96%).
SPOT_PAGES = 2
# Measured on bench/data/questions.json (bench/recall.py pages): the stretches read held an
# accepted answer for 49 of 52 questions with a weight of 1, 2 or 3, 48 with it only breaking
# ties, 47 with the nearest passage put before every word, 48 without it.
_NEAREST_WEIGHT = 2
# Words match by their first letters, so that "sorted" finds "sort" and "vectors" "vector".
_PREFIX = 5


def choose_pages(candidates: list[tuple[int, float]], page_tokens: dict[int, int],
                 budget: int = SPOT_TOKENS, pages: int = SPOT_PAGES) -> list[tuple[int, int]]:
    """``(page, tokens to read)`` for the best ``pages`` candidates with text, best first: an
    equal share of ``budget`` each, and what a short page leaves to the others."""
    chosen = [page for page, _ in candidates if page_tokens.get(page, 0) > 0][:pages]
    takes: dict[int, int] = {}
    left = budget
    for i, page in enumerate(sorted(chosen, key=lambda p: page_tokens[p])):  # shortest first
        share = left // (len(chosen) - i)
        takes[page] = min(page_tokens[page], share)
        left -= takes[page]
    return [(page, takes[page]) for page in chosen]


def window(text: str, tokens: int, take: int, question: str, focus: tuple[int, int] | None = None) -> str:
    """The ``take``-token stretch of a ``tokens``-token page that holds most of the question's
    words (its start when none is there), cut at spaces. With ``focus``, the characters of the
    page's passage nearest the question in meaning (engine.recall.page_search), a stretch that holds
    that passage whole counts it as ``_NEAREST_WEIGHT`` of the question's words: a question in
    a reader's words may share none with the page."""
    if take >= tokens:
        return text
    size = len(text) * take // tokens
    wanted = {w[:_PREFIX] for w in content_words(question)}
    stride = max(1, size // 8)
    starts = list(range(0, len(text) - size + 1, stride))
    if focus is not None:
        starts.append(min(max(0, (focus[0] + focus[1] - size) // 2), len(text) - size))
    best, start = -1, 0
    for at in starts:
        holds = focus is not None and at <= focus[0] and focus[1] <= at + size
        score = sum(w[:_PREFIX] in wanted for w in content_words(text[at:at + size])) + _NEAREST_WEIGHT * holds
        if score > best:
            best, start = score, at
    if start:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < start + stride else start
    end = start + size
    space = text.rfind(" ", start, end)
    return text[start:space if space > start + size // 2 else end]


def spot_pages(candidates: list[tuple[int, float]], page_text: Callable[[int], str], tokens: Callable[[str], int],
               question: str, nearest: dict[int, tuple[int, int]] | None = None) -> dict[int, str]:
    """What is read on the spot for ``question``: page → the stretch of it to read, best first,
    from the candidates (best first) and ``nearest`` (page → the characters of its passage
    nearest the question in meaning). Only the pages that can be read are fetched and counted."""
    texts: dict[int, str] = {}
    for page, _ in candidates:
        if len(texts) == SPOT_PAGES:
            break
        if text := page_text(page):
            texts[page] = text
    lengths = {page: tokens(text) for page, text in texts.items()}
    return {page: window(texts[page], lengths[page], take, question, (nearest or {}).get(page))
            for page, take in choose_pages(candidates, lengths)}


def pages_document(path: Path, title: str, pages: dict[int, str], page_count: int) -> Document:
    """A document holding only ``pages`` (page number → text) of a ``page_count``-page document;
    every other page is empty, so page numbers stay those of the whole document."""
    text, starts = "", []
    for page in range(1, page_count + 1):
        starts.append(len(text))
        text += pages.get(page, "")
    return Document(path, title, hashlib.sha256(text.encode()).hexdigest(), text, tuple(starts), "pages")
