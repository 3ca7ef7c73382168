"""How a document, questions and answers are laid out in the model's chat template.

The document is read inside the first user turn. We render a conversation with a marker
where the document goes and cut the rendered text there: what comes before the marker is read
once with the document; what comes after is appended at question time. The cut is the same
for every conversation, so a memory made once serves any later question.

Control tokens (``<|im_start|>`` and the like) come only from the template's own text. A
prompt is rendered with a placeholder for each message's content and kept as segments: the
template's text, tokenized with its control tokens parsed, and the contents (a document's
notes, a question, an answer), tokenized as plain text, so that a document or a person typing
``<|im_end|><|im_start|>system`` gets those characters and never a new turn.
"""

from __future__ import annotations

import re

import numpy as np

SYSTEM = (
    "You are Comma, an assistant that answers questions about the document the user gives you. "
    "Answer briefly and only from the document."
)
DOCUMENT_INTRO = "Here is the document.\n\n"
SUMMARY_REQUEST = (
    "Below are notes on a long document, one for each part, in order. "
    "Write a summary of the whole document in one paragraph.\n\n{notes}"
)
_MARK = "⟦comma:document⟧"  # no NUL: the template renderer takes C strings
PASSAGES = "⟦comma:passages⟧"  # where a follow-up's passages go in its turn (engine.answering.conversation)
ANSWER = "⟦comma:answer⟧"  # where an earlier answer's own generated tokens go (engine.answering.conversation)
FOLLOW_UP_INTRO = "From the document:\n\n"
# Where a message's content goes while the template is rendered (no NUL, as for _MARK).
_CONTENT = re.compile(r"⟦comma:content:(\d+)⟧")

# A piece of a rendered prompt: its text, and whether it is the template's own (its control
# tokens are read as such) rather than a message's content (read as plain text).
Segment = tuple[str, bool]


def render(model, messages: list[dict[str, str]], add_assistant: bool = True) -> list[Segment]:
    """``messages`` in the model's chat template, as the template's text and the contents."""
    placeheld = [{**m, "content": f"⟦comma:content:{i}⟧"} for i, m in enumerate(messages)]
    parts = _CONTENT.split(model.apply_chat_template(placeheld, add_assistant=add_assistant))
    # split() alternates: template text, a content's number, template text, ...
    return _drop_empty([(messages[int(part)]["content"], False) if i % 2 else (part, True)
                        for i, part in enumerate(parts)])


def _drop_empty(segments: list[Segment]) -> list[Segment]:
    return [segment for segment in segments if segment[0]]


def tokenize_prompt(model, segments: list[Segment], add_bos: bool = False) -> np.ndarray:
    """The prompt's tokens: control tokens parsed in the template's text only."""
    tokens = [model.tokenize(text, special=template, add_bos=add_bos and i == 0) for i, (text, template) in
              enumerate(segments)]
    return np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, dtype=np.int32)


def _around_document(model, after_document: str, later_turns: list[dict[str, str]]) -> tuple[list[Segment],
                                                                                               list[Segment]]:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _MARK + after_document},
        *later_turns,
    ]
    segments = render(model, messages)
    for i, (text, template) in enumerate(segments):
        if not template and _MARK in text:
            before, _, after = text.partition(_MARK)
            return _drop_empty([*segments[:i], (before, False)]), _drop_empty([(after, False), *segments[i + 1:]])
    return segments, []


def document_prefix(model) -> str:
    """Read once, before the document's own text (all of it the template's or Comma's own)."""
    return "".join(text for text, _ in _around_document(model, "", [])[0]) + DOCUMENT_INTRO


def question_layout(model, history: list[dict[str, str]], question: str) -> list[Segment]:
    """Everything after the document: earlier turns of the session, then the new question."""
    if not history:
        return _around_document(model, "\n\nQuestion: " + question, [])[1]
    first, *rest = history
    later = [*rest, {"role": "user", "content": question}]
    return _around_document(model, "\n\nQuestion: " + first["content"], later)[1]


def question_suffix(model, history: list[dict[str, str]], question: str) -> str:
    """``question_layout`` as one text, for a prompt of Comma's own words only."""
    return "".join(text for text, _ in question_layout(model, history, question))


def with_passages(question: str) -> str:
    """A follow-up's turn when passages of the document were chosen for it: they go at the
    ``PASSAGES`` mark, before the question, as the first question's follow the document."""
    return FOLLOW_UP_INTRO + PASSAGES + "\n\nQuestion: " + question


def summary_prompt(model, notes: list[str]) -> list[Segment]:
    """A fresh conversation (no document memory) that combines the section notes (the
    document's own sentences: plain text)."""
    body = SUMMARY_REQUEST.format(notes="\n".join(f"- {n}" for n in notes))
    return render(model, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}])
