"""Short speed probes of a model on this CPU: llama.cpp's prefill in SepLLM's steady state and
its answer decoding. The Settings dialog uses them to show what a faster copy of a person's
model gains before they keep it; ``bench/cpu_ceiling.py`` uses them as the ceiling that
Comma's reading is measured against."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from engine.backends.gguf.context import GGUFCache
from engine.backends.gguf.model import GGUFModel

# SepLLM's default tiers: after an eviction a+s+w = 324 slots stay, then c - 324 = 476 come in.
STEADY_CACHED, STEADY_CHUNK = 324, 476


def prefill_rate(model: GGUFModel, tokens: np.ndarray, cached: int = STEADY_CACHED, chunk: int = STEADY_CHUNK,
                 runs: int = 5, flash_attn: bool = True) -> float:
    """Median tokens/s of decoding ``chunk`` tokens (no logits) after ``cached`` ones."""
    if len(tokens) < cached + chunk:
        raise ValueError(f"the probe needs {cached + chunk} tokens, got {len(tokens)}")
    cache = GGUFCache(model, cached + chunk + 8, max(chunk, 1), flash_attn=flash_attn)
    flags = np.zeros(cached + chunk, dtype=bool)
    if cached:
        cache.append(tokens[:cached], np.arange(cached), flags[:cached])
    body = tokens[cached:cached + chunk]
    rates = []
    for _ in range(runs + 1):  # the first run warms caches and is dropped
        started = time.perf_counter()
        cache.append(body, np.arange(cached, cached + chunk), flags[cached:])
        rates.append(chunk / (time.perf_counter() - started))
        cache.truncate(cached)
    return statistics.median(rates[1:])


def decode_rate(model: GGUFModel, tokens: np.ndarray, context: int = 800, steps: int = 64, runs: int = 3) -> float:
    """Median tokens/s of decoding ``steps`` tokens one by one after ``context`` tokens."""
    if len(tokens) < context + steps:
        raise ValueError(f"the probe needs {context + steps} tokens, got {len(tokens)}")
    cache = GGUFCache(model, context + steps + 8, 512)
    cache.append(tokens[:context], np.arange(context), np.zeros(context, dtype=bool))
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for t in tokens[context:context + steps]:
            cache.decode_main_tail(np.array([t], dtype=np.int32))
        rates.append(steps / (time.perf_counter() - started))
        cache.truncate(context)
    return statistics.median(rates)


# Any prose serves: the speed of a forward pass does not depend on which tokens it reads.
_PROBE_TEXT = ("The parties agree that either of them may end this agreement by written notice. "
               "Payments are due within thirty days of each invoice, and late payments bear interest; ")


def compare(original: Path, copy: Path, runs: int = 3) -> dict:
    """Prefill and decode tokens/s of two model files, measured one after the other."""
    figures = {}
    for label, path in (("original", original), ("copy", copy)):
        model = GGUFModel(path)
        tokens = model.tokenize(_PROBE_TEXT * 40)
        figures[label] = {"prefill_tokens_per_s": round(prefill_rate(model, tokens, runs=runs), 1),
                          "decode_tokens_per_s": round(decode_rate(model, tokens, runs=runs), 1)}
        del model
    return figures
