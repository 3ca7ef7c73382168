"""Section notes: the document cut into passages of a few thousand tokens, and for each the one
sentence of its own that says best what it is about. A whole-document summary is written from
them (engine/answering/summary.py), since a memory alone remembers the end in detail.

The note is the passage's sentence nearest its tf-idf centroid (centroid-based extractive
summarisation: Radev et al., 2004), with a word's idf taken over the document's passages, so
the words a passage shares with every other one weigh nothing. It is found in milliseconds,
from the text alone, for every engine and reading path alike.

It used to be written by the reading model, decoding a sentence on a branch of its cache after
each passage: about 0.6 s a note with the bundled model on 2 cores, a sixth of a 40K-token read,
and the most a read could not get back. Those notes were the 135M model's paraphrases,
which can say what the passage does not; these are the document's own words. bench/notes.py
measures both on real texts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.protocols import Model
from engine.recall.question_words import content_words

NOTE_MIN_INTERVAL = 1536  # tokens: a note every ~2 pages
NOTE_MAX_COUNT = 64  # a longer document gets longer passages, so a summary's input stays bounded
NOTE_MAX_CHARS = 360
SENTENCE_WORDS = (6, 60)  # what reads as a sentence rather than a heading, a list item or a table

_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
# A word split at a line's end by a typesetter's hyphen (man pages) or a soft hyphen.
_BROKEN_WORD = re.compile(r"(?<=\w)[\u2010\u00ad]\n\s*(?=\w)")
# A sentence ends at . ! or ? (a closing quote or bracket may follow) before what starts one.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass
class Note:
    first_page: int
    last_page: int
    text: str


def passage_bounds(prompt_tokens: int, total_tokens: int) -> list[tuple[int, int]]:
    """Stream offsets ``[start, end)`` of the passages a note is taken on: all of the document,
    NOTE_MIN_INTERVAL tokens each or more, at most NOTE_MAX_COUNT of them."""
    interval = max(NOTE_MIN_INTERVAL, -(-(total_tokens - prompt_tokens) // NOTE_MAX_COUNT))
    starts = list(range(prompt_tokens, total_tokens, interval))
    return [(s, min(s + interval, total_tokens)) for s in starts]


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences, each on one line (a PDF's or a manual's line breaks inside a
    sentence become spaces)."""
    out: list[str] = []
    for paragraph in _PARAGRAPHS.split(_BROKEN_WORD.sub("", text)):
        flat = " ".join(paragraph.split())
        out.extend(s for s in _SENTENCE_END.split(flat) if s)
    return out


def _is_sentence(text: str) -> bool:
    words = len(text.split())
    letters = _LETTER.findall(text)
    # Its first letter is a capital, after any clause number or quote ("3.1 The tenant …").
    return (SENTENCE_WORDS[0] <= words <= SENTENCE_WORDS[1] and bool(letters) and letters[0].isupper()
            and text[-1] in ".!?:" and len(letters) >= 0.6 * len(text.replace(" ", "")))


def _vector(words: list[str], idf: dict[str, float]) -> dict[str, float]:
    counts = Counter(words)
    return {w: c * idf.get(w, 0.0) for w, c in counts.items()}


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(v * b.get(w, 0.0) for w, v in a.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def _shorten(text: str) -> str:
    if len(text) <= NOTE_MAX_CHARS:
        return text
    return text[:NOTE_MAX_CHARS].rsplit(" ", 1)[0] + "…"


def key_sentence(text: str, idf: dict[str, float]) -> str:
    """The sentence of ``text`` nearest its tf-idf centroid; where none reads as a whole
    sentence (a table, code, a passage of headings), the line-like piece that is nearest.
    Empty for a passage without words."""
    pieces = sentences(text)
    centroid = _vector(content_words(text), idf)
    candidates = [s for s in pieces if _is_sentence(s)] or [s for s in pieces if len(content_words(s)) >= 3]
    if not candidates:
        return ""
    # First among equals: a passage's opening sentence more often states its subject.
    best = max(candidates, key=lambda s: _cosine(_vector(content_words(s), idf), centroid))
    return _shorten(best)


def inverse_document_frequency(passages: list[str]) -> dict[str, float]:
    """Smoothed idf of each content word over ``passages`` (a word in all of them weighs least)."""
    df: Counter[str] = Counter()
    for text in passages:
        df.update(set(content_words(text)))
    n = len(passages)
    return {w: math.log((1 + n) / (1 + d)) + 1.0 for w, d in df.items()}


def section_notes(model: Model, tokens: np.ndarray, prompt_tokens: int,
                  page_of_token: Callable[[int], int | None]) -> list[Note]:
    """One note per passage of the token stream ``tokens`` (the document after ``prompt_tokens``),
    in order, with the pages each passage spans (``page_of_token(offset)``)."""
    bounds = passage_bounds(prompt_tokens, len(tokens))
    texts = [model.detokenize(tokens[s:e]).decode("utf-8", "replace") for s, e in bounds]
    idf = inverse_document_frequency(texts)
    notes = []
    for (start, end), text in zip(bounds, texts, strict=True):
        note = key_sentence(text, idf)
        if note:
            first = page_of_token(start) or 1
            notes.append(Note(first, page_of_token(end - 1) or first, note))
    return notes
