"""Reading, on the spot, the passages a question needs, for a model that has not read the document.

The answering model reads a document in the background at a tenth of the small model's speed
(docs/design.md); until it is done, a question is still answered by it, from the passages
found for the question (``engine.recall.page_search``: by their words and their meaning, fused),
read there and then with full attention. The budget goes to the best passages wherever they
are, rather than to the best pages cut at a share of it: on the dev part of bench/data/heldout
the stretches so read held an accepted answer for more of the questions in a reader's words
(bench/README.md). Passages of one page that overlap or touch are read as one stretch.
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
from engine.recall.page_search import Found

SPOT_TOKENS = 768
GAP = " … "  # between two stretches of one page that are not read together
# The best passages tried (a passage is about 160 tokens): on the dev part of bench/data/heldout,
# trying 8 or 24 read an answer for as many questions as 12.
CONSIDERED = 12


def _joined(text: str, spans: list[tuple[int, int]]) -> str:
    """The stretches of ``text`` at ``spans``, in the page's order, overlapping ones as one."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return GAP.join(text[start:end] for start, end in merged)


def spot_pages(found: Found, page_text: Callable[[int], str], tokens: Callable[[str], int],
               budget: int | None = None) -> dict[int, str]:
    """What is read on the spot: page → the stretches of it to read, the best passages that fit
    ``budget`` tokens together (``SPOT_TOKENS`` by default); pages in ``found.pages``' order,
    then any others in the order their best passage came."""
    budget = SPOT_TOKENS if budget is None else budget
    spans: dict[int, list[tuple[int, int]]] = {}
    texts: dict[int, str] = {}
    cost: dict[int, int] = {}
    for passage, _ in found.passages[:CONSIDERED]:
        text = texts.setdefault(passage.page, page_text(passage.page))
        if not text[passage.start:passage.end].strip():
            continue
        trial = [*spans.get(passage.page, []), (passage.start, passage.end)]
        more = tokens(_joined(text, trial))
        if sum(cost.values()) - cost.get(passage.page, 0) + more > budget:
            continue  # a shorter passage further down may still fit
        spans[passage.page], cost[passage.page] = trial, more
    ranked = [page for page, _ in found.pages if page in spans]
    order = ranked + [page for page in spans if page not in ranked]
    return {page: _joined(texts[page], spans[page]) for page in order}


def pages_document(path: Path, title: str, pages: dict[int, str], page_count: int) -> Document:
    """A document holding only ``pages`` (page number → text) of a ``page_count``-page document;
    every other page is empty, so page numbers stay those of the whole document."""
    text, starts = "", []
    for page in range(1, page_count + 1):
        starts.append(len(text))
        text += pages.get(page, "")
    return Document(path, title, hashlib.sha256(text.encode()).hexdigest(), text, tuple(starts), "pages")
