"""How a document, questions and answers are laid out in the model's chat template.

The document is read inside the first user turn. We render a conversation with a marker
where the document goes and cut the rendered text there: what comes before the marker is read
once with the document; what comes after is appended at question time. The cut is the same
for every conversation, so a memory made once serves any later question.
"""

from __future__ import annotations

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


def _around_document(model, after_document: str, later_turns: list[dict[str, str]]) -> tuple[str, str]:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _MARK + after_document},
        *later_turns,
    ]
    before, _, after = model.apply_chat_template(messages, add_assistant=True).partition(_MARK)
    return before + DOCUMENT_INTRO, after


def document_prefix(model) -> str:
    """Read once, before the document's own text."""
    return _around_document(model, "", [])[0]


def question_suffix(model, history: list[dict[str, str]], question: str) -> str:
    """Everything after the document: earlier turns of the session, then the new question."""
    if not history:
        return _around_document(model, "\n\nQuestion: " + question, [])[1]
    first, *rest = history
    later = [*rest, {"role": "user", "content": question}]
    return _around_document(model, "\n\nQuestion: " + first["content"], later)[1]


def with_passages(question: str) -> str:
    """A follow-up's turn when passages of the document were chosen for it: they go at the
    ``PASSAGES`` mark, before the question, as the first question's follow the document."""
    return FOLLOW_UP_INTRO + PASSAGES + "\n\nQuestion: " + question


def summary_prompt(model, notes: list[str]) -> str:
    """A fresh conversation (no document memory) that combines the section notes."""
    body = SUMMARY_REQUEST.format(notes="\n".join(f"- {n}" for n in notes))
    return model.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}], add_assistant=True
    )
