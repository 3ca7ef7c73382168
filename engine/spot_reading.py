"""Reading, on the spot, the pages a question needs, for a model that has not read the document.

The answering model reads a document in the background at a tenth of the small model's speed
(DESIGN.md, "Two models"); until it is done, a question is still answered by it, from the
pages the full-text index finds for the question, read there and then with full attention.
The pages become a document of their own whose other pages are empty, so the memory's page map
(and so every citation) keeps the real page numbers. The read is bounded by ``SPOT_TOKENS``:
on a 2-core CPU the answering model reads about 40 tokens/s, so that bound is what keeps the
first token under about 20 seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.documents import Document

SPOT_TOKENS = 768
# A page cut to fit keeps its start: the full-text index scores a page as a whole, and a
# page's first lines (a heading, a clause's number) say what it is about.
MIN_PAGE_TOKENS = 96


def choose_pages(candidates: list[tuple[int, float]], page_tokens: dict[int, int],
                 budget: int = SPOT_TOKENS) -> list[tuple[int, int]]:
    """``(page, tokens to read)`` for the best candidates that fit ``budget``, best first.

    The best page is always read, cut to the budget when it alone is longer; later pages are
    read whole or, when at least ``MIN_PAGE_TOKENS`` of room is left, cut to what is left."""
    chosen: list[tuple[int, int]] = []
    left = budget
    for page, _ in candidates:
        n = page_tokens.get(page, 0)
        if n == 0:
            continue
        if n > left and chosen and left < MIN_PAGE_TOKENS:
            break
        take = min(n, left)
        chosen.append((page, take))
        left -= take
        if left <= 0:
            break
    return chosen


def cut(text: str, tokens: int, take: int) -> str:
    """The start of a ``tokens``-token text holding about ``take`` tokens, cut at a space."""
    if take >= tokens:
        return text
    end = len(text) * take // tokens
    space = text.rfind(" ", 0, end)
    return text[:space if space > end // 2 else end]


def pages_document(path: Path, title: str, pages: dict[int, str], page_count: int) -> Document:
    """A document holding only ``pages`` (page number → text) of a ``page_count``-page document;
    every other page is empty, so page numbers stay those of the whole document."""
    text, starts = "", []
    for page in range(1, page_count + 1):
        starts.append(len(text))
        text += pages.get(page, "")
    return Document(path, title, hashlib.sha256(text.encode()).hexdigest(), text, tuple(starts), "pages")
