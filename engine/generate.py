"""The token-by-token generation loop shared by answers, section notes and summaries.

Backend-neutral: it is given the logits of the last prompt token and a ``step`` function that
feeds one token and returns the next logits. The default is greedy decoding with a repetition
penalty, which keeps small models from looping while staying deterministic, so the same
question gets the same answer from the same memory (and benchmarks are reproducible). A person
can ask for sampling instead: ``temperature`` above 0 with nucleus (``top_p``) filtering, seeded
when ``seed`` is given. ``generate_text`` is the loop as every caller uses it: text pieces, with
multi-byte characters held back until they are whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    repetition_penalty: float = 1.15
    penalty_window: int = 96
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # with temperature > 0: sample from the smallest set of tokens this likely
    seed: int | None = None

    def __post_init__(self):
        if not 1 <= self.max_tokens <= 1_000_000:
            raise ValueError(f"the answer length must be between 1 and 1,000,000 tokens, not {self.max_tokens}")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"the temperature must be between 0 and {MAX_TEMPERATURE:g}, not {self.temperature:g}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p must be above 0 and at most 1, not {self.top_p:g}")


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token: the most likely one, or one drawn from the temperature-scaled
    distribution cut to its top-p nucleus."""
    if sampling.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p >= 1.0:  # no nucleus: no sort of a whole vocabulary on every token
        return int(rng.choice(len(probs), p=probs))
    order = np.argsort(probs)[::-1]
    # Keep tokens until their mass reaches top_p, the one that crosses it included.
    kept = order[:int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1]
    return int(rng.choice(kept, p=probs[kept] / probs[kept].sum()))


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
    rng = np.random.default_rng(sampling.seed)
    recent: list[int] = []
    for _ in range(sampling.max_tokens):
        if should_stop():
            return
        if recent and sampling.repetition_penalty != 1.0:
            ids = np.unique(recent[-sampling.penalty_window:])
            vals = logits[ids]
            logits[ids] = np.where(vals > 0, vals / sampling.repetition_penalty, vals * sampling.repetition_penalty)
        token = choose(logits, sampling, rng)
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
