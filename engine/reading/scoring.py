"""Log-probabilities of given tokens under a cache policy: perplexity, and later chunk choice.

The tokens are read exactly as a document is (same policy, same chunking, same eviction), but
every position's next-token distribution is kept, so the figure measures what the compressed
cache costs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.policy import Policy
from engine.protocols import Model
from engine.reading.reader import cache_size, prefill
from engine.reading.stream import DEFAULT_CHUNK, TokenStream


@dataclass
class Scores:
    logprobs: np.ndarray  # log P(token[i+1] | tokens[..i] as cached), for i in 0..n-2
    attended: np.ndarray  # how many cached keys token i attended to (the KV it actually had)

    def perplexity(self, start: int = 0, end: int | None = None) -> float:
        return float(np.exp(-self.logprobs[start:end].mean()))


def score(model: Model, tokens: np.ndarray, policy: Policy, chunk: int = DEFAULT_CHUNK,
          separators: np.ndarray | None = None, progress=None) -> Scores:
    """``separators`` overrides which tokens the policy treats as separators (for ablations);
    ``progress(done, total)`` is called after every chunk."""
    tokens = np.asarray(tokens, dtype=np.int32)
    flags = model.separator_ids[tokens] if separators is None else np.asarray(separators, dtype=bool)
    stream = TokenStream(tokens, flags, 0, [0])
    cache = model.new_cache(cache_size(model, policy, len(stream)), policy.max_chunk(chunk))
    logprobs = np.empty(len(tokens) - 1, dtype=np.float64)
    attended = np.empty(len(tokens), dtype=np.int64)

    def collect(start: int, logits) -> None:
        n = len(logits)
        attended[start:start + n] = cache.length - n + np.arange(1, n + 1)
        targets = tokens[start + 1:start + n + 1]
        logprobs[start:start + len(targets)] = model.log_probs_at(logits, targets)

    with cache:
        prefill(cache, stream, policy, chunk, on_logits=collect, progress=progress)
    return Scores(logprobs, attended)
