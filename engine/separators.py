"""Separator tokens, found in the tokenizer's own vocabulary rather than a fixed id list.

SepLLM keeps the tokens that close a segment: punctuation and line breaks, in Latin and CJK
forms. A token counts when its text, leading and trailing spaces aside, is made only of
separator characters ("." " ," ".\\n" "\\n\\n" "。"); SepLLM's ablation shows that dropping
the less common separators costs accuracy, so all of them are included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SEPARATOR_CHARS = frozenset(".,;:?!\n。，；：？！、")


def is_separator_text(text: str) -> bool:
    core = text.strip(" \t")
    return bool(core) and all(ch in SEPARATOR_CHARS for ch in core)


def separator_table(pieces: Sequence[bytes]) -> np.ndarray:
    """For every token id, whether its piece (raw bytes) is a separator."""
    table = np.zeros(len(pieces), dtype=bool)
    for token_id, piece in enumerate(pieces):
        try:
            table[token_id] = is_separator_text(piece.decode("utf-8"))
        except UnicodeDecodeError:
            # A fragment of a multi-byte character is never a whole separator.
            continue
    return table
