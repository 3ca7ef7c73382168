"""What both backends' models derive from their token pieces: byte lengths, separator flags,
detokenizing. Each model provides ``pieces`` (the raw bytes of every token id)."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from engine.separators import separator_table


class PieceVocabulary:
    pieces: list[bytes]

    @cached_property
    def piece_lengths(self) -> np.ndarray:
        return np.array([len(p) for p in self.pieces], dtype=np.int64)

    @cached_property
    def separator_ids(self) -> np.ndarray:
        return separator_table(self.pieces)

    def detokenize(self, tokens) -> bytes:
        return b"".join(self.pieces[int(t)] for t in tokens)
