"""PDF pages become clean text: lines with their place and type size, page numbers and running
heads removed, paragraphs and table rows joined, and the headings that mark sections.

engine.documents.document opens the file and calls these page by page; pages read by OCR (engine.documents.ocr)
come in as the same lines, without type sizes.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import groupby

import pymupdf

from engine.documents.text_files import INVISIBLE

# MuPDF expands ligatures and turns unknown glyphs into U+FFFD (dropped) with these flags,
# and ignores text placed outside the page.
_FLAGS = pymupdf.TEXT_MEDIABOX_CLIP
_BOLD = 16  # MuPDF's span flag

_EDGE_ROWS = 2
_RUNNING_MIN_PAGES = 3
_SAME_PLACE_POINTS = 6  # a running head sits at one height; typesetters move it by less than this
_HEAD_MAX_WORDS = 12
_DIGITS = re.compile(r"\d+")
_ROMAN = r"[ivxlcdm]{1,8}"
_PAGE_LABEL = re.compile(
    rf"(?:(?:page|p\.|pg\.?|seite|p\u00e1gina|pagina)\s*)?[-\u2013\u2014\[(]?\s*(?P<number>\d{{1,5}}|{_ROMAN})\s*"
    r"(?:(?:of|/|von|de|sur)\s*\d{1,5})?\s*[-\u2013\u2014\])]?",
    re.IGNORECASE,
)
_HYPHENS = "-\u2010"
_LARGER = 1.15  # a heading's type is at least this much larger than the body text's
# "8. Termination", "8.2 Notice", "Section 4", "Article IV", "§ 12": a heading even in body type, when bold.
_NUMBERED_HEADING = re.compile(
    r"(?:\d+(?:\.\d+)*\.?|(?:section|article|chapter|part|clause|schedule|annex|appendix)\s+[\divxlc]+\.?|§\s*\d+)"
    r"\s+\S", re.IGNORECASE,
)


@dataclass(frozen=True)
class Line:
    block: int
    baseline: int
    x: float
    text: str
    size: float = 0.0  # type size in points; 0 when unknown (a line read by OCR)
    bold: bool = False


def page_lines(page: pymupdf.Page) -> list[Line]:
    # Blocks in MuPDF's order, not sorted by position: sorting by height interleaves the lines
    # of side-by-side columns.
    lines = []
    for block_no, block in enumerate(page.get_text("dict", flags=_FLAGS)["blocks"]):
        for line in block.get("lines", ()):
            spans = [span for span in line["spans"] if span["text"].strip()]
            text = " ".join(INVISIBLE.sub("", "".join(span["text"] for span in line["spans"])).split())
            if text and spans:
                baseline = round(line["spans"][0]["origin"][1])
                size = round(max(span["size"] for span in spans), 1)
                bold = all(span["flags"] & _BOLD or "bold" in span["font"].lower() for span in spans)
                lines.append(Line(block_no, baseline, line["bbox"][0], text, size, bold))
    return lines


# --- page numbers and running heads ----------------------------------------------------------


def _edge_rows(lines: list[Line]) -> tuple[list[int], list[int]]:
    """Baselines of the top and bottom rows of a page, outermost first."""
    baselines = sorted({line.baseline for line in lines})
    return baselines[:_EDGE_ROWS], baselines[::-1][:_EDGE_ROWS]


def _row_text(lines: list[Line], baseline: int) -> str:
    return " ".join(line.text for line in sorted(lines, key=lambda line: line.x) if line.baseline == baseline)


def _row_key(text: str, baseline: int) -> tuple[str, int]:
    # Running heads differ from page to page only by their page number, and sit at one height.
    return _DIGITS.sub("#", text.lower()), round(baseline / _SAME_PLACE_POINTS)


def _label_number(text: str) -> int | str | None:
    """The page number of a row that is only a page label ("12", "Page 12 of 40", "- 12 -"),
    as an int, or the numeral of a roman one ("iv"); None for any other row."""
    match = _PAGE_LABEL.fullmatch(text)
    if not match:
        return None
    number = match.group("number")
    return int(number) if number.isdigit() else number.lower()


def _is_plain_label(text: str) -> bool:
    # A bare "12" or "iv" may be a clause or list number; "Page 12", "12 of 40" or "- 12 -" cannot.
    return _DIGITS.fullmatch(text) is not None or re.fullmatch(_ROMAN, text, re.IGNORECASE) is not None


def _sentence_like(text: str) -> bool:
    """Body text rather than a head: a sentence ends in punctuation, and heads are short."""
    words = text.split()
    return len(words) > _HEAD_MAX_WORDS or (len(words) >= 3 and text[-1] in ".!?;:")


def _end_numbers(text: str) -> set[int]:
    # A running head carries its page number first or last ("12 Contents", "Chapter 4: Terms 18").
    words = text.split()
    return {int(word) for word in (words[0], words[-1]) if word.isdigit()}


def strip_running_rows(pages: list[list[Line]]) -> list[list[Line]]:
    """Remove page numbers, running headers and running footers from the top and bottom of pages.

    Only rows within ``_EDGE_ROWS`` of an edge are considered, outermost first, and a sentence is
    never removed. A row goes when it is

    - a page label ("12", "Page 12 of 40", "- 12 -"); a bare number only when it is the printed
      page number the document uses at that edge, a bare roman numeral when that edge numbers at
      least three pages so;
    - the same text (digits aside) at the same place on at least three pages and on at least half
      the pages from its first to its last appearance (a document-wide or chapter head); or
    - a short head whose first or last word is the page number printed at that edge, where that
      edge prints its page numbers: books repeat a chapter's title only over that chapter, often
      only two pages.

    A page keeps its text even when all of it repeats elsewhere: removing every row of a short
    page is how body text used to be lost.
    """
    edges = [_edge_rows(lines) for lines in pages]
    rows = [
        [{baseline: _row_text(lines, baseline) for baseline in side} for side in page_edges]
        for lines, page_edges in zip(pages, edges, strict=True)
    ]
    offsets, number_places = zip(*(_page_number_offset(rows, side) for side in (0, 1)), strict=True)
    roman_edges = [
        sum(any(isinstance(_label_number(t), str) for t in page[side].values()) for page in rows) >= _RUNNING_MIN_PAGES
        for side in (0, 1)
    ]
    running = []
    for side in (0, 1):
        seen = defaultdict(list)
        for number, page in enumerate(rows):
            for key in {_row_key(text, baseline) for baseline, text in page[side].items()}:
                seen[key].append(number)
        running.append({
            key for key, at in seen.items()
            if len(at) >= _RUNNING_MIN_PAGES and 2 * len(at) >= at[-1] - at[0] + 1
        })

    def removable(page_no: int, side: int, baseline: int, text: str) -> bool:
        label = _label_number(text)
        offset = offsets[side]
        if label is not None:
            if isinstance(label, str):
                return roman_edges[side] or not _is_plain_label(text)
            return not _is_plain_label(text) or (offset is not None and label == page_no - offset)
        if _sentence_like(text):
            return False
        if _row_key(text, baseline) in running[side]:
            return True
        # "1 Introduction" under a page number 1 is a chapter's heading, not a running head.
        at_number_place = round(baseline / _SAME_PLACE_POINTS) in number_places[side]
        return offset is not None and at_number_place and page_no - offset in _end_numbers(text)

    stripped = []
    for page_no, (lines, page) in enumerate(zip(pages, rows, strict=True), start=1):
        dropped: set[int] = set()
        for side in (0, 1):
            for baseline, text in page[side].items():
                if baseline not in dropped and not removable(page_no, side, baseline, text):
                    break
                dropped.add(baseline)
        kept = [line for line in lines if line.baseline not in dropped]
        if not kept:  # every row was an edge row: keep all but the page labels
            labels = {b for side in page for b, text in side.items() if _label_number(text) is not None}
            kept = [line for line in lines if line.baseline not in labels]
        stripped.append(kept)
    return stripped


def _page_number_offset(rows: list[list[dict[int, str]]], side: int) -> tuple[int | None, set[int]]:
    """Page index minus printed page number at one edge, when at least half the pages (and at
    least three) print one there, as a page label or at an end of a short head; and the places
    (baseline buckets) where at least three pages print it."""
    votes: Counter[int] = Counter()
    places: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for page_no, page in enumerate(rows, start=1):
        numbers: set[int] = set()
        for baseline, text in page[side].items():
            label = _label_number(text)
            found = {label} if isinstance(label, int) else _end_numbers(text) if label is None \
                and not _sentence_like(text) else set()
            numbers |= found
            for n in found:
                places[page_no - n][round(baseline / _SAME_PLACE_POINTS)] += 1
        votes.update({page_no - n for n in numbers})
    if not votes:
        return None, set()
    offset, count = votes.most_common(1)[0]
    if count >= _RUNNING_MIN_PAGES and 2 * count >= len(rows):
        return offset, {place for place, pages in places[offset].items() if pages >= _RUNNING_MIN_PAGES}
    return None, set()


# --- paragraphs and tables --------------------------------------------------------------------


def paragraphs(lines: list[Line]) -> str:
    # MuPDF starts a new block at a paragraph's vertical gap, so blocks are the paragraphs and
    # the line breaks inside a block are only where the typesetter ran out of width.
    return "\n\n".join(_block_text(list(block)) for _, block in groupby(lines, key=lambda line: line.block))


def _block_text(block: list[Line]) -> str:
    rows = [sorted(row, key=lambda line: line.x) for _, row in groupby(block, key=lambda line: line.baseline)]
    # A table is a block whose rows are split into cells: MuPDF makes a line of each cell, and
    # joining them as prose would run a fee schedule's rows together.
    split = sum(len(row) > 1 for row in rows)
    if split >= 2 and 2 * split >= len(rows):
        return "\n".join(" | ".join(cell.text for cell in row) for row in rows)
    return _join_lines([line.text for line in block])


def _join_lines(lines: list[str]) -> str:
    # MuPDF's own TEXT_DEHYPHENATE joins "Jean-" + "Paul" into "JeanPaul" and "pre-" + "2020"
    # into "pre2020"; only a hyphen between letters, before a lower-case letter, is a break here.
    parts = [lines[0]]
    for line in lines[1:]:
        previous = parts[-1]
        if previous[-1] in _HYPHENS and previous[-2:-1].isalpha() and line[0].islower():
            parts[-1] = previous[:-1] + line
        else:
            parts.append(line)
    return " ".join(parts)


# --- headings and the title -------------------------------------------------------------------


def _body_size(pages: list[list[Line]]) -> float:
    sizes: Counter[float] = Counter()
    for page in pages:
        for line in page:
            sizes[line.size] += len(line.text)
    return sizes.most_common(1)[0][0] if sizes else 0.0


def _heading_like(text: str) -> bool:
    return (not _sentence_like(text) and len(text.split()) <= _HEAD_MAX_WORDS and _label_number(text) is None
            and sum(c.isalpha() for c in text) >= 2)


def headings(pages: list[list[Line]]) -> list[list[tuple[str, int]]]:
    """The headings of each page, in order, with their level (1 the largest type): a block set
    in type larger than the body text's, or a bold numbered line ("8. Termination") in any
    type, short and not a sentence. For PDFs without an outline."""
    body = _body_size(pages)
    if not body:
        return [[] for _ in pages]
    larger = sorted({line.size for page in pages for line in page if line.size >= body * _LARGER}, reverse=True)
    found = []
    for page in pages:
        on_page = []
        for _, block in groupby(page, key=lambda line: line.block):
            lines = list(block)
            text = " ".join(line.text for line in lines)
            size = min(line.size for line in lines)
            if not _heading_like(text):
                continue
            if size >= body * _LARGER:
                on_page.append((text, larger.index(size) + 1))
            elif all(line.bold for line in lines) and _NUMBERED_HEADING.match(text):
                depth = text.split()[0].rstrip(".").count(".") + 1
                on_page.append((text, len(larger) + depth))
        found.append(on_page)
    return found


def first_page_title(pages: list[list[Line]]) -> str:
    """The text set largest on the first page with text, when it is larger than the body text
    (a title page's title), else ""."""
    body = _body_size(pages)
    page = next((page for page in pages if page), [])
    if not page or not body:
        return ""
    top = max(line.size for line in page)
    if top < body * _LARGER:
        return ""
    # The title's lines: the first run of lines in that type, which may wrap.
    first = next(i for i, line in enumerate(page) if line.size == top)
    lines = []
    for line in page[first:]:
        if line.size != top:
            break
        lines.append(line.text)
    return " ".join(lines)
