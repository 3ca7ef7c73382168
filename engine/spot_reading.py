"""Reading, on the spot, the pages a question needs, for a model that has not read the document.

The answering model reads a document in the background at a tenth of the small model's speed
(DESIGN.md, "Two models"); until it is done, a question is still answered by it, from the
pages the full-text index finds for the question, read there and then with full attention:
the best two, each cut to the stretch that holds most of the question's words.
The pages become a document of their own whose other pages are empty, so the memory's page map
(and so every citation) keeps the real page numbers. The read is bounded by ``SPOT_TOKENS``:
on a 2-core CPU the answering model reads about 40 tokens/s, so that bound is what keeps the
first token near 20 seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.documents import Document
from engine.question_words import content_words

SPOT_TOKENS = 768
# The budget is shared by the best two pages: the page the full-text index ranks first holds
# the answer for 81% of the questions of bench/data/questions.json (62% of those in a reader's
# words), the first two for 90% (81%).
SPOT_PAGES = 2
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


def window(text: str, tokens: int, take: int, question: str) -> str:
    """The ``take``-token stretch of a ``tokens``-token page that holds most of the question's
    words (its start when none is there), cut at spaces."""
    if take >= tokens:
        return text
    size = len(text) * take // tokens
    wanted = {w[:_PREFIX] for w in content_words(question)}
    stride = max(1, size // 8)
    best, start = -1, 0
    for at in range(0, len(text) - size + 1, stride):
        hits = sum(w[:_PREFIX] in wanted for w in content_words(text[at:at + size]))
        if hits > best:
            best, start = hits, at
    if start:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < start + stride else start
    end = start + size
    space = text.rfind(" ", start, end)
    return text[start:space if space > start + size // 2 else end]


def pages_document(path: Path, title: str, pages: dict[int, str], page_count: int) -> Document:
    """A document holding only ``pages`` (page number → text) of a ``page_count``-page document;
    every other page is empty, so page numbers stay those of the whole document."""
    text, starts = "", []
    for page in range(1, page_count + 1):
        starts.append(len(text))
        text += pages.get(page, "")
    return Document(path, title, hashlib.sha256(text.encode()).hexdigest(), text, tuple(starts), "pages")
