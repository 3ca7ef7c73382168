"""The token-by-token generation loop shared by answers, section notes and summaries.

Backend-neutral: it is given the logits of the last prompt token and a ``step`` function that
feeds one token and returns the next logits. Greedy decoding with a repetition penalty keeps
small models from looping while staying deterministic, so the same question gets the same
answer from the same memory. ``generate_text`` is the loop as every caller uses it: text
pieces, with multi-byte characters held back until they are whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    repetition_penalty: float = 1.15
    penalty_window: int = 96


class Utf8Stream:
    """Turns token byte pieces into text, holding back an incomplete multi-byte character."""

    def __init__(self):
        self._pending = b""

    def push(self, piece: bytes) -> str:
        data = self._pending + piece
        for cut in range(len(data), max(len(data) - 4, -1), -1):
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._pending = data[cut:]
            return text
        self._pending = b""
        return data.decode("utf-8", "replace")


def generate(first_logits: np.ndarray, step: Callable[[int], np.ndarray], is_end: Callable[[int], bool],
             sampling: Sampling = Sampling(), should_stop: Callable[[], bool] = lambda: False) -> Iterator[int]:
    """Yield generated token ids until an end token, ``max_tokens`` or ``should_stop()``."""
    logits = np.asarray(first_logits, dtype=np.float32).reshape(-1)
    recent: list[int] = []
    for _ in range(sampling.max_tokens):
        if should_stop():
            return
        if recent and sampling.repetition_penalty != 1.0:
            ids = np.unique(recent[-sampling.penalty_window:])
            vals = logits[ids]
            logits[ids] = np.where(vals > 0, vals / sampling.repetition_penalty, vals * sampling.repetition_penalty)
        token = int(np.argmax(logits))
        if is_end(token):
            return
        yield token
        recent.append(token)
        logits = np.asarray(step(token), dtype=np.float32).reshape(-1)


def generate_text(model, first_logits: np.ndarray, step: Callable[[int], np.ndarray],
                  sampling: Sampling = Sampling(), should_stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """Yield the generated text piece by piece (a piece may be empty while a character is split)."""
    text = Utf8Stream()
    for token in generate(first_logits, step, model.is_end_of_generation, sampling, should_stop):
        yield text.push(model.pieces[token])
