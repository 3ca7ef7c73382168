"""Whether an answer states what it was not given: the figures and names in it that appear
nowhere in the text the model answered from (nor in the question).

A model given a few passages that do not answer a question answers it anyway, fluently, and
cites a real page: "30 days" to cure a breach in a licence that sets no cure period, "the
courts of the United States" in one with no venue clause (bench/data/heldout). Asking the
answering model to say when the passages do not answer made it say so for every question,
answerable or not (measured on the dev part, bench/README.md). A figure or a name that the
document never contains cannot have come from it, nor can one outside the passages a model read
on the spot: that is checked for certain, with no model. Such an answer is kept, and followed by
a note saying which words are missing and from what.
"""

from __future__ import annotations

import re

# Small counts ("names two warranties") are an answer's own reckoning, not a claim of the text.
NUMBER_WORDS = frozenset("fifteen twenty thirty forty fifty sixty ninety hundred thousand million".split())
_FIGURE = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[A-Za-z][\w'-]*")
_SENTENCE_END = re.compile(r"[.!?:]\s*$")
_NOTE = re.compile(r"\n\n\(Check this answer: [^\n]*\)\Z")


def _words(text: str) -> set[str]:
    return {w.casefold() for w in re.findall(r"\w+", text)}


def claims(answer: str) -> list[str]:
    """The figures and names an answer states: numbers (in digits or words) and capitalised
    words that do not begin a sentence."""
    found = [m.group() for m in _FIGURE.finditer(answer)]
    for m in _WORD.finditer(answer):
        word = m.group()
        before = answer[:m.start()].rstrip()
        starts_sentence = not before or bool(_SENTENCE_END.search(before)) or before.endswith(("\"", "“", "(", "-"))
        if word.casefold() in NUMBER_WORDS or (word[0].isupper() and not starts_sentence):
            found.append(word)
    return list(dict.fromkeys(found))


def unsupported(answer: str, question: str, document_text: str) -> list[str]:
    """The figures and names of ``answer`` that neither the document nor the question contains
    (compared word by word, ignoring case; a figure by its digits)."""
    known = _words(document_text) | _words(question)
    digits = set(_FIGURE.findall(document_text)) | set(_FIGURE.findall(question))
    out = []
    for claim in claims(answer):
        if _FIGURE.fullmatch(claim):
            if claim not in digits:
                out.append(claim)
        elif not _words(claim) <= known:
            out.append(claim)
    return out


def note(missing: list[str], source: str = "the document does") -> str:
    """What follows an answer that states them: what ``source`` does not contain."""
    listed = ", ".join(f"“{word}”" for word in missing)
    return f"\n\n(Check this answer: {source} not contain {listed}.)"


def spoken(answer: str) -> str:
    """An answer as the model said it, without the note Comma added (a conversation's earlier
    turns are laid out for the model as it spoke them)."""
    return _NOTE.sub("", answer)
