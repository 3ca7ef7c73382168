"""Perplexity of full attention, StreamingLLM and SepLLM on real texts, at equal average KV.

Method: each text's first ``--tokens`` tokens are scored with the bundled model under each
policy, read in the same chunks as ingest. Perplexity is over tokens ``--skip`` onwards (the
first ``c`` tokens are identical for every policy). SepLLM's cache swings between a+s+w and c,
so it is compared both with StreamingLLM at the same capacity c and with StreamingLLM whose
capacity gives the same *average* number of attended keys per token (found by simulating the
one policy implementation on the text's own separator flags). Prints one JSON object.

    python bench/perplexity.py [--tokens 8000] [--texts gpl3,python_reference,bash_manual]

``--ablation`` instead scores SepLLM variants that might explain a gap to StreamingLLM: the
separator set without line breaks (hard-wrapped text has a "separator" every line), and other
splits of the same capacity between separators and window.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import emit  # noqa: E402
from bench.texts import TEXTS  # noqa: E402
from engine.backends.loading import load_model  # noqa: E402
from engine.policy import Full, SepLLM, Streaming  # noqa: E402
from engine.reading.scoring import score  # noqa: E402
from engine.reading.stream import DEFAULT_CHUNK  # noqa: E402


def simulated_average_kv(policy, separators: np.ndarray, chunk: int) -> float:
    """Mean attended keys per token, from the policy alone (no model needed)."""
    chunk = policy.max_chunk(chunk)
    cache_flags = np.zeros(0, dtype=bool)
    total = 0
    for start in range(0, len(separators), chunk):
        n = min(chunk, len(separators) - start)
        keep = policy.keep(cache_flags, n)
        if keep is not None:
            cache_flags = cache_flags[keep]
        total += len(cache_flags) * n + n * (n + 1) // 2
        cache_flags = np.concatenate([cache_flags, separators[start:start + n]])
    return total / len(separators)


def streaming_matching(target: float, separators: np.ndarray, initial: int, chunk: int) -> Streaming:
    lo, hi = initial + 2, 4 * int(target)
    while lo < hi:
        mid = (lo + hi) // 2
        if simulated_average_kv(Streaming(initial, mid), separators, chunk) < target:
            lo = mid + 1
        else:
            hi = mid
    return Streaming(initial, lo)


def punctuation_only(model) -> np.ndarray:
    """The separator table minus tokens that are only line breaks and spaces."""
    table = model.separator_ids.copy()
    for token in np.flatnonzero(table):
        if not model.pieces[token].strip(b" \t\n"):
            table[token] = False
    return table


def ablation(model, args) -> list[dict]:
    table = punctuation_only(model)
    variants = {
        "sepllm_4_64_256_800": (SepLLM(), None),
        "sepllm_no_line_breaks": (SepLLM(), table),
        "sepllm_4_32_384_800": (SepLLM(4, 32, 384, 800), None),
        "sepllm_4_128_128_800": (SepLLM(4, 128, 128, 800), None),
    }
    rows = []
    for name in args.texts.split(","):
        tokens = model.tokenize(TEXTS[name]())[: args.tokens]
        row = {"text": name, "tokens": len(tokens)}
        for label, (policy, separators) in variants.items():
            flags = None if separators is None else separators[tokens]
            s = score(model, tokens, policy, separators=flags)
            row[label] = {"policy": policy.describe(), "perplexity": round(s.perplexity(args.skip), 3),
                          "average_kv": round(float(s.attended[args.skip:].mean()), 1)}
            print(f"{name} {label}: {row[label]}", file=sys.stderr)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--skip", type=int, default=1000)
    parser.add_argument("--texts", default="gpl3,python_reference,bash_manual,gnutls_news")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--backend", choices=["gguf", "torch"], default="gguf")
    args = parser.parse_args()
    model = load_model(args.backend)
    sep = SepLLM()
    results = ablation(model, args) if args.ablation else []
    for name in [] if args.ablation else args.texts.split(","):
        tokens = model.tokenize(TEXTS[name]())[: args.tokens]
        flags = model.separator_ids[tokens]
        sep_avg = simulated_average_kv(sep, flags, DEFAULT_CHUNK)
        policies = {
            "full": Full(),
            "streaming_same_c": Streaming(sep.initial, sep.capacity),
            "streaming_same_avg": streaming_matching(sep_avg, flags, sep.initial, DEFAULT_CHUNK),
            "sepllm": sep,
        }
        row = {"text": name, "tokens": len(tokens), "separator_share": round(float(flags.mean()), 4)}
        for label, policy in policies.items():
            started = time.perf_counter()
            s = score(model, tokens, policy)
            row[label] = {
                "policy": policy.describe(),
                "perplexity": round(s.perplexity(args.skip), 3),
                "average_kv": round(float(s.attended[args.skip:].mean()), 1),
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(f"{name} {label}: {row[label]}", file=sys.stderr)
        results.append(row)
    emit("perplexity_ablation" if args.ablation else "perplexity", __doc__, model, {"results": results}, args.out)


if __name__ == "__main__":
    main()
