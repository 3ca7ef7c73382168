"""A whole-document summary made from the section notes of a read (engine/reading/section_notes.py).

The final memory remembers the end of a long document in detail and the rest only through its
separators; the notes, one per passage, cover it all in order. They are combined by the model
in a fresh context (no document memory needed); when they are too many for one prompt they are
combined in groups first, then the group summaries are combined.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.generate import Sampling, generate_text
from engine.prompts import Segment, summary_prompt, tokenize_prompt
from engine.protocols import Model

SUMMARY_TOKENS = 320
GROUP_PROMPT_TOKENS = 1536


def _complete(model: Model, prompt: list[Segment], max_tokens: int) -> str:
    tokens = tokenize_prompt(model, prompt, add_bos=True)
    with model.new_cache(len(tokens) + max_tokens + 8) as cache:
        logits = cache.decode_main_tail(tokens)
        step = lambda t: cache.decode_main_tail(np.array([t], dtype=np.int32))
        return "".join(generate_text(model, logits, step, Sampling(max_tokens=max_tokens))).strip()


def summarize_notes(model: Model, notes: list[str], progress: Callable[[int, int], None] | None = None) -> str:
    """One paragraph from ``notes`` (in document order)."""
    level = list(notes)
    while True:
        groups: list[list[str]] = []
        current: list[str] = []
        size = 0
        for note in level:
            n = len(model.tokenize(note)) + 4
            if current and size + n > GROUP_PROMPT_TOKENS:
                groups.append(current)
                current, size = [], 0
            current.append(note)
            size += n
        groups.append(current)
        combined = []
        for i, group in enumerate(groups):
            combined.append(_complete(model, summary_prompt(model, group), SUMMARY_TOKENS))
            if progress is not None:
                progress(i + 1, len(groups))
        if len(combined) == 1:
            return combined[0]
        level = combined
